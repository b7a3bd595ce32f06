"""Trial bookkeeping of ``li2 sweep`` on Optuna's ask-and-tell: who trains which point, exactly once.

One Optuna study per group of compatible points (points that can share a population). The process
that creates a study enqueues every point of the group as a WAITING trial, in one pass, and then
marks the study ``li2_enqueued``; a process that finds the study already there only loads it (it
waits for the mark). A worker asks up to S waiting trials of one study, trains them as one
population and tells each its result: the result row and its per-epoch curves are trial user
attributes, the trial's value is the final test accuracy.

Stores:

- default: an SQLite file beside the sweep's results (``results: x.jsonl`` gives ``x.db``); a
  relative ``results`` is resolved from the sweep file's folder, never from the current folder;
- ``--storage journal:PATH``: an Optuna ``JournalStorage`` file, for a disk shared between machines
  where SQLite's locking is not to be trusted (NFS);
- ``--storage URL``: any SQLAlchemy URL Optuna accepts (``postgresql://...``, ``mysql://...``),
  for workers on several machines.

A killed worker: its RUNNING trials stop sending heartbeats (Optuna's ``heartbeat_interval``); once
``grace_period`` has passed, any worker (or a rerun) fails them with ``fail_stale_trials`` and
Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues each point again, so the point is finished
elsewhere. Journal files have no Optuna heartbeat; there the heartbeat is a trial system attribute
and the same callback runs on the trials this module fails.

SQLite transactions are opened with ``BEGIN IMMEDIATE``: pysqlite would otherwise read a trial's
state outside the write transaction, and two workers could both pop the same WAITING trial.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
# heartbeats are used with ask-and-tell on purpose (this module sends them); the APIs are stable enough here
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

ENQUEUED = "li2_enqueued"  # study user attr: the creator enqueued every point
HEARTBEAT_ATTR = "li2_heartbeat"  # trial system attr (journal stores only)
CURVE_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


class StoreError(RuntimeError):
    """The store cannot be opened or written."""


class UnrecordedResults(RuntimeError):
    """Finished results could not be told to the store; ``path`` holds them."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class Store:
    """An opened Optuna storage and where it lives (``path`` is None for a database server)."""

    storage: Any
    url: str
    path: Optional[Path]
    heartbeat_interval: int
    grace_period: int
    retry: Callable = field(default=None)

    @property
    def optuna_heartbeat(self) -> bool:
        return isinstance(self.storage, optuna.storages.RDBStorage)


def default_store_url(results: Path) -> str:
    """The default store of a sweep: an SQLite file beside its results JSONL."""
    return f"sqlite:///{results.with_suffix('.db')}"


def open_store(url: str, heartbeat_interval: int = 20, grace_period: int = 60, max_retry: int = 3) -> Store:
    """Open (create) the store at ``url`` and check it takes a write, before anything trains.

    Args:
        url: ``sqlite:///PATH``, ``journal:PATH`` or an SQLAlchemy database URL.
        heartbeat_interval: seconds between a worker's heartbeats for its running trials.
        grace_period: seconds without a heartbeat after which a running trial counts as dead.
        max_retry: how often a dead worker's point is enqueued again.

    Raises:
        StoreError: naming the store and the reason when it cannot be opened or written.
    """
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise ValueError(f"heartbeat_interval={heartbeat_interval}, grace_period={grace_period} are not accepted; "
                         "accepted: integers with 1 <= heartbeat_interval < grace_period")
    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    path = None
    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:"):])
            _check_place(path)
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            storage = JournalStorage(JournalFileBackend(str(path)))
        else:
            if url.startswith("sqlite:///"):
                path = Path(url[len("sqlite:///"):])
                _check_place(path)
            storage = _rdb(url, heartbeat_interval, grace_period, retry)
    except StoreError:
        raise
    except Exception as err:  # sqlalchemy/OS errors: one message naming the store
        raise StoreError(f"results store '{path or url}' cannot be opened: {_why(err)}") from err
    store = Store(storage, url, path, heartbeat_interval, grace_period, retry)
    probe(store)
    return store


def _check_place(path: Path) -> None:
    if path.is_dir():
        raise StoreError(f"results store '{path}' is a folder; give a file path (--storage or `results:`)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"results store '{path}': cannot create its folder: {err}") from err


def _rdb(url: str, heartbeat_interval: int, grace_period: int, retry) -> optuna.storages.RDBStorage:
    sqlite = url.startswith("sqlite:")
    kwargs = {"connect_args": {"timeout": 300}} if sqlite else {"pool_pre_ping": True}
    for attempt in range(5):  # two processes creating the tables of a new file at once: the loser retries
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                                                 grace_period=grace_period, heartbeat_stale_trial_callback=retry)
            break
        except Exception as err:
            if attempt == 4 or not any(w in str(err) for w in ("already exists", "locked", "UNIQUE")):
                raise
            time.sleep(0.5 + attempt)
    if sqlite:
        import sqlalchemy

        engine = storage.engine

        @sqlalchemy.event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_connection, record):
            dbapi_connection.isolation_level = None
            # WAL with synchronous=NORMAL: a commit is durable across a killed process (not a power cut)
            # without an fsync per transaction, which cost ~10 ms each here
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        @sqlalchemy.event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        engine.dispose()  # pooled connections were opened before the listeners
    return storage


def _why(err: BaseException) -> str:
    cause = err.__cause__ or err.__context__
    text = str(getattr(cause, "orig", None) or cause or err) if isinstance(err, optuna.exceptions.StorageInternalError) \
        else str(getattr(err, "orig", None) or err)
    return text.splitlines()[0] if text else type(err).__name__


def probe(store: Store) -> None:
    """One write transaction on the store (a study attribute), or StoreError naming the store."""
    try:
        study = optuna.create_study(study_name="li2_probe", storage=store.storage, load_if_exists=True)
        study.set_user_attr("last_probe", f"{socket.gethostname()}:{os.getpid()}:{time.time()}")
    except Exception as err:
        raise StoreError(f"results store '{store.path or store.url}' is not writable: {_why(err)}; "
                         "fix its permissions, free disk space or give another with --storage") from err


def study_name(sweep: str, key: str) -> str:
    return f"{sweep}:{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def ensure_study(store: Store, name: str, points: list[tuple[int, str, dict]],
                 done_rows: Optional[dict[str, dict]] = None, wait_s: float = 120.0) -> optuna.Study:
    """Create the study ``name`` and enqueue its points, or load it if another process created it.

    Args:
        points: ``(index, point_id, point)`` per point, in the order workers should take them.
        done_rows: rows already finished (e.g. from an older results JSONL), by point id; their points
            are added as COMPLETE trials instead of being enqueued.
        wait_s: how long a loader waits for the creator to finish enqueueing.
    """
    try:
        study = optuna.create_study(study_name=name, storage=store.storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=store.storage)
        deadline = time.time() + wait_s
        while not study.user_attrs.get(ENQUEUED):
            if time.time() > deadline:  # the creator died while enqueueing: add what is missing
                _enqueue(study, _missing(study, points), done_rows or {}, late=True)
                study.set_user_attr(ENQUEUED, True)
                break
            time.sleep(0.2)
        return study
    _enqueue(study, points, done_rows or {})
    study.set_user_attr(ENQUEUED, True)
    return study


def _missing(study: optuna.Study, points: list[tuple[int, str, dict]]) -> list[tuple[int, str, dict]]:
    have = {t.user_attrs.get("point_id") for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.FAIL}
    return [p for p in points if p[1] not in have]


def _enqueue(study: optuna.Study, points: list[tuple[int, str, dict]], done_rows: dict[str, dict],
             late: bool = False) -> None:
    """Add the points as WAITING trials (finished ones as COMPLETE); ``late``: added by a loader after
    the creator died, so a point may be there twice (:func:`ask_batch` checks those)."""
    waiting = []
    for index, pid, point in points:
        attrs = {"point_id": pid, "point": point, "index": index, **({"li2_late": True} if late else {})}
        row = done_rows.get(pid)
        if row is None:
            waiting.append(attrs)
        else:  # finished by the JSONL engine before this store existed
            curves = row.get("curves") or {}
            attrs.update(row={k: v for k, v in row.items() if k != "curves"}, imported=True,
                         **{f"curve:{k}": v for k, v in curves.items()})
            study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=objective(row),
                                                      user_attrs=attrs))
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's _CachedStorage
    if isinstance(storage, optuna.storages.RDBStorage):
        _rdb_enqueue(storage, study._study_id, waiting)
    else:
        for attrs in waiting:
            study.enqueue_trial({}, user_attrs=attrs)


def objective(row: dict) -> float:
    """The trial value: final test accuracy, -1 for a diverged or unmeasured member."""
    v = row.get("final_test_acc")
    return -1.0 if row.get("diverged") or v is None or not math.isfinite(v) else float(v)


# ---------------------------------------------------------------- a worker's side


@dataclass
class Held:
    """A trial a worker popped: RUNNING, heartbeat recorded, ``user_attrs`` as enqueued (``point``...)."""

    trial_id: int
    number: int
    user_attrs: dict

    @property
    def _trial_id(self) -> int:  # as on optuna.Trial, for callers written against Optuna's trials
        return self.trial_id


class Heartbeat:
    """A thread that records a heartbeat for the trials a worker holds, every ``interval`` seconds.

    The first heartbeat is recorded when the trials are popped (:func:`ask_batch`); this thread adds
    one transaction per interval for all of them, whatever the epoch rate.
    """

    def __init__(self, store: Store, study: optuna.Study) -> None:
        self.store, self.study = store, study
        self.trial_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def beat(self) -> None:
        try:
            _record_heartbeats(self.store, list(self.trial_ids))
        except Exception as err:  # a full disk or a lost server: the tell will say so; keep training
            print(f"li2 sweep: heartbeat not recorded ({_why(err)})", file=sys.stderr)

    def _run(self) -> None:
        while not self._stop.wait(self.store.heartbeat_interval):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def reclaim_stale(store: Store, study: optuna.Study) -> None:
    """Fail the running trials of dead workers and enqueue their points again (once per failure).

    On an RDB store, Optuna's ``fail_stale_trials`` judges trials by their heartbeats; a trial
    popped by a worker killed before its first heartbeat has none (Optuna never calls it stale), so
    a running trial without the ``worker`` attribute (set right after the first heartbeat) is judged
    by its start time. Journal stores: by the heartbeat attribute, else the start time.
    """
    if store.optuna_heartbeat:
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    storage = store.storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if store.optuna_heartbeat and "worker" in t.user_attrs:
            continue
        start = t.datetime_start.timestamp() if t.datetime_start else now
        if now - t.system_attrs.get(HEARTBEAT_ATTR, start) > store.grace_period:
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    store.retry(study, storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass


def ask_batch(study: optuna.Study, store: Store, size: int) -> list[Held]:
    """Up to ``size`` waiting trials of ``study``, now RUNNING and held by this worker, with heartbeats.

    On an RDB store the pop is one transaction (``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE SKIP
    LOCKED`` on a server), so each WAITING trial goes to exactly one worker; elsewhere it is
    Optuna's own compare-and-set per trial. A popped point that another trial already holds or
    finished (possible only for a retried or late-enqueued trial) is closed as PRUNED.
    """
    storage, sid = store.storage, study._study_id
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if isinstance(storage, optuna.storages.RDBStorage):
        held, suspects = _rdb_pop(storage, sid, size, worker)
    else:
        held, suspects = [], []
        for t in storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
            if len(held) == size:
                break
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                continue  # another worker took it
            _record_heartbeats(store, [t._trial_id])
            storage.set_trial_user_attr(t._trial_id, "worker", worker)
            held.append(Held(t._trial_id, t.number, dict(t.user_attrs)))
            if "failed_trial" in t.system_attrs or t.user_attrs.get("li2_late"):
                suspects.append(t.number)
    if not suspects:
        return held
    owners: dict[str, list] = {}
    for t in storage.get_all_trials(sid, deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)):
        owners.setdefault(t.user_attrs.get("point_id"), []).append(t)
    kept = []
    for h in held:
        first = [t for t in owners.get(h.user_attrs.get("point_id"), []) if t.number != h.number
                 and (t.state == TrialState.COMPLETE or t.number < h.number)] if h.number in suspects else []
        if first:
            storage.set_trial_user_attr(h.trial_id, "duplicate_of", first[0].number)
            storage.set_trial_state_values(h.trial_id, state=TrialState.PRUNED)
        else:
            kept.append(h)
    return kept


def _record_heartbeats(store: Store, trial_ids: list[int]) -> None:
    if not trial_ids:
        return
    if store.optuna_heartbeat:
        _rdb_heartbeat(store.storage, trial_ids)
    else:
        now = time.time()
        for tid in trial_ids:
            store.storage.set_trial_system_attr(tid, HEARTBEAT_ATTR, now)


def tell_rows(study: optuna.Study, store: Store, trials: list[Held], rows: list[dict],
              fallback_name: str) -> None:
    """Tell each trial its row (user attrs ``row`` and ``curve:*``, value :func:`objective`).

    On an RDB store all of a population's results are one transaction. A trial that is no longer
    RUNNING (failed as stale while this worker was stalled) keeps its state; its row is unrecorded.

    Raises:
        UnrecordedResults: when a tell fails (disk full, store gone); every row not recorded is then
            in a JSONL file beside the store or in ``$TMPDIR`` (the error names it).
    """
    items = []
    for held, row in zip(trials, rows):
        attrs = {"row": {k: v for k, v in row.items() if k != "curves"},
                 **{f"curve:{k}": v for k, v in (row.get("curves") or {}).items()}}
        items.append((held.trial_id, attrs, objective(row)))
    unrecorded, reason = [], None
    try:
        if isinstance(store.storage, optuna.storages.RDBStorage):
            told = _rdb_tell(store.storage, items)
        else:
            told = set()
            for tid, attrs, value in items:
                for k, v in attrs.items():
                    store.storage.set_trial_user_attr(tid, k, v)
                store.storage.set_trial_state_values(tid, TrialState.COMPLETE, [value])
                told.add(tid)
    except Exception as err:
        reason, told = _why(err), set()
    unrecorded = [row for held, row in zip(trials, rows) if held.trial_id not in told]
    if unrecorded:
        reason = reason or "the trial was failed as stale by another worker (no heartbeat within the grace period)"
        path = save_unrecorded(unrecorded, store.path, fallback_name)
        raise UnrecordedResults(f"{len(unrecorded)} finished result(s) could not be recorded in "
                                f"'{store.path or store.url}' ({reason}); they are saved in {path}", path)


# ------------------------------------------------- RDB stores: one transaction per batch
# Optuna's public storage API is one transaction per call (3-5 queries each); a population of S
# points then costs ~4 S transactions to pop and ~6 S to tell, 45-60 ms a point on SQLite. These
# helpers do each batch in one transaction on Optuna's own tables (``optuna.storages._rdb``,
# schema unchanged since Optuna 3; the trials stay readable by every Optuna tool).


def _session(storage):
    from optuna.storages._rdb.storage import _create_scoped_session

    return _create_scoped_session(storage.scoped_session)


def _rdb_enqueue(storage, study_id: int, attrs_list: list[dict]) -> None:
    from optuna.storages._rdb import models
    from sqlalchemy import func

    if not attrs_list:
        return
    with _session(storage) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)  # numbers stay unique
        n = session.query(func.count(models.TrialModel.trial_id)).filter(
            models.TrialModel.study_id == study_id).scalar()
        for i, attrs in enumerate(attrs_list):
            trial = models.TrialModel(study_id=study_id, number=n + i, state=TrialState.WAITING)
            trial.user_attributes = [models.TrialUserAttributeModel(key=k, value_json=json.dumps(v))
                                     for k, v in attrs.items()]
            # as Study.enqueue_trial: Optuna's own ask pops these too
            trial.system_attributes = [models.TrialSystemAttributeModel(key="fixed_params", value_json="{}")]
            session.add(trial)


def _rdb_pop(storage, study_id: int, size: int, worker: str) -> tuple[list[Held], list[int]]:
    from datetime import datetime

    import sqlalchemy as sa
    from optuna.storages._rdb import models

    T = models.TrialModel
    with _session(storage) as session:
        trials = (session.query(T).filter(T.study_id == study_id, T.state == TrialState.WAITING)
                  .order_by(T.number).limit(size).with_for_update(skip_locked=True).all())
        if not trials:
            return [], []
        ids = [t.trial_id for t in trials]
        now = datetime.now()
        A, H = models.TrialUserAttributeModel, models.TrialHeartbeatModel
        # a retried trial carries its failed predecessor's user attrs, ``worker`` included
        session.execute(sa.delete(A).where(A.trial_id.in_(ids), A.key == "worker"))
        session.execute(sa.delete(H).where(H.trial_id.in_(ids)))
        for t in trials:
            t.state = TrialState.RUNNING
            t.datetime_start = now
        session.execute(sa.insert(A), [{"trial_id": tid, "key": "worker", "value_json": json.dumps(worker)}
                                       for tid in ids])
        session.execute(sa.insert(H), [{"trial_id": tid} for tid in ids])
        attrs: dict[int, dict] = {tid: {} for tid in ids}
        for a in session.query(models.TrialUserAttributeModel).filter(
                models.TrialUserAttributeModel.trial_id.in_(ids)):
            attrs[a.trial_id][a.key] = json.loads(a.value_json)
        retried = {a.trial_id for a in session.query(models.TrialSystemAttributeModel.trial_id).filter(
            models.TrialSystemAttributeModel.trial_id.in_(ids), models.TrialSystemAttributeModel.key == "failed_trial")}
        held = [Held(t.trial_id, t.number, attrs[t.trial_id]) for t in trials]
    suspects = [h.number for h in held if h.trial_id in retried or h.user_attrs.get("li2_late")]
    return held, suspects


def _rdb_heartbeat(storage, trial_ids: list[int]) -> None:
    from optuna.storages._rdb import models
    from sqlalchemy import func

    H = models.TrialHeartbeatModel
    with _session(storage) as session:
        have = {h.trial_id for h in session.query(H.trial_id).filter(H.trial_id.in_(trial_ids))}
        session.query(H).filter(H.trial_id.in_(trial_ids)).update({H.heartbeat: func.now()},
                                                                  synchronize_session=False)
        for tid in set(trial_ids) - have:
            session.add(H(trial_id=tid))


def _rdb_tell(storage, items: list[tuple[int, dict, float]]) -> set[int]:
    from datetime import datetime

    import sqlalchemy as sa
    from optuna.storages._rdb import models

    T, A, V = models.TrialModel, models.TrialUserAttributeModel, models.TrialValueModel
    with _session(storage) as session:
        ids = [tid for tid, _, _ in items]
        running = {t.trial_id for t in session.query(T.trial_id).filter(
            T.trial_id.in_(ids), T.state == TrialState.RUNNING).with_for_update()}
        mine = [(tid, attrs, value) for tid, attrs, value in items if tid in running]
        if not mine:
            return set()
        keys = sorted({k for _, attrs, _ in mine for k in attrs})
        session.execute(sa.delete(A).where(A.trial_id.in_(running), A.key.in_(keys)))
        session.execute(sa.insert(A), [{"trial_id": tid, "key": k, "value_json": json.dumps(v)}
                                       for tid, attrs, _ in mine for k, v in attrs.items()])
        values = [(tid, *V.value_to_stored_repr(value)) for tid, _, value in mine]
        session.execute(sa.insert(V), [{"trial_id": tid, "objective": 0, "value": v, "value_type": kind}
                                       for tid, v, kind in values])
        for t in session.query(T).filter(T.trial_id.in_(running)):  # the ORM converts datetimes to UTC
            t.state = TrialState.COMPLETE
            t.datetime_complete = datetime.now()
    return running


def save_unrecorded(rows: list[dict], store_path: Optional[Path], name: str) -> Path:
    """Write rows as JSON lines beside the store, or in ``$TMPDIR`` if that fails; return the path."""
    fname = f"{name}.unrecorded-{socket.gethostname()}-{os.getpid()}-{int(time.time())}.jsonl"
    places = ([store_path.parent] if store_path is not None else []) + [Path(tempfile.gettempdir())]
    errors = []
    for folder in places:
        path = folder / fname
        try:
            write_jsonl(path, rows, append=True)
            return path
        except OSError as err:
            errors.append(f"{path}: {err}")
            try:
                path.unlink()
            except OSError:
                pass
    raise OSError("results could not be saved anywhere: " + "; ".join(errors))


def write_jsonl(path: Path, rows: Iterable[dict], append: bool = False) -> None:
    """Write rows as JSON lines with fsync; a short write raises OSError instead of leaving a cut line."""
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(f"short write to {path}")
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def completed_rows(study: optuna.Study) -> list[dict]:
    """The rows of the COMPLETE trials of a study, each with its curves, in point order."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "row" not in t.user_attrs:
            continue
        row = dict(t.user_attrs["row"])
        curves = {k[len("curve:"):]: v for k, v in t.user_attrs.items() if k.startswith("curve:")}
        if curves:
            row["curves"] = curves
        row["_index"] = t.user_attrs.get("index", 0)
        rows.append(row)
    rows.sort(key=lambda r: r.pop("_index"))
    return rows


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials of a study by state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
