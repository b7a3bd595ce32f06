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
                _enqueue(study, _missing(study, points), done_rows or {})
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


def _enqueue(study: optuna.Study, points: list[tuple[int, str, dict]], done_rows: dict[str, dict]) -> None:
    for index, pid, point in points:
        attrs = {"point_id": pid, "point": point, "index": index}
        row = done_rows.get(pid)
        if row is None:
            study.enqueue_trial({}, user_attrs=attrs)
        else:  # finished by the JSONL engine before this store existed
            curves = row.get("curves") or {}
            attrs.update(row={k: v for k, v in row.items() if k != "curves"}, imported=True,
                         **{f"curve:{k}": v for k, v in curves.items()})
            study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=objective(row),
                                                      user_attrs=attrs))


def objective(row: dict) -> float:
    """The trial value: final test accuracy, -1 for a diverged or unmeasured member."""
    v = row.get("final_test_acc")
    return -1.0 if row.get("diverged") or v is None or not math.isfinite(v) else float(v)


# ---------------------------------------------------------------- a worker's side


class Heartbeat:
    """A thread that records a heartbeat for the trials a worker holds, every ``interval`` seconds."""

    def __init__(self, store: Store, study: optuna.Study) -> None:
        self.store, self.study = store, study
        self.trial_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def beat(self) -> None:
        for tid in list(self.trial_ids):
            try:
                if self.store.optuna_heartbeat:
                    self.store.storage.record_heartbeat(tid)
                else:
                    self.store.storage.set_trial_system_attr(tid, HEARTBEAT_ATTR, time.time())
            except Exception as err:  # a full disk or a lost server: the tell will say so; keep training
                print(f"li2 sweep: heartbeat not recorded ({_why(err)})", file=sys.stderr)

    def _run(self) -> None:
        while not self._stop.wait(self.store.heartbeat_interval):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        self.beat()
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


def ask_batch(study: optuna.Study, store: Store, size: int) -> list[optuna.Trial]:
    """Up to ``size`` waiting trials of ``study``, now RUNNING and held by this worker, with heartbeats.

    Optuna's ``ask`` pops a WAITING trial, or creates an empty one when another worker took the
    last; such an empty trial is closed as PRUNED. A popped point that another trial already holds
    or finished (a duplicate from a retried enqueue) is closed as PRUNED too.
    """
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    trials = []
    for _ in range(min(size, waiting)):
        trial = study.ask()
        if "point_id" not in trial.user_attrs:
            trial.set_user_attr("li2_empty", True)
            study.tell(trial, state=TrialState.PRUNED)
            break
        _record_heartbeat(store, trial._trial_id)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trials.append(trial)
    if not trials:
        return trials
    owners: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)):
        owners.setdefault(t.user_attrs.get("point_id"), []).append(t)
    kept = []
    for trial in trials:
        pid = trial.user_attrs["point_id"]
        first = [t for t in owners.get(pid, []) if t.number != trial.number
                 and (t.state == TrialState.COMPLETE or t.number < trial.number)]
        if first:
            trial.set_user_attr("duplicate_of", first[0].number)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            kept.append(trial)
    return kept


def _record_heartbeat(store: Store, trial_id: int) -> None:
    if store.optuna_heartbeat:
        store.storage.record_heartbeat(trial_id)
    else:
        store.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


def tell_rows(study: optuna.Study, store: Store, trials: list[optuna.Trial], rows: list[dict],
              fallback_name: str) -> None:
    """Tell each trial its row (user attrs ``row`` and ``curve:*``, value :func:`objective`).

    Raises:
        UnrecordedResults: when a tell fails (disk full, store gone); every row not recorded is then
            in a JSONL file beside the store or in ``$TMPDIR`` (the error names it).
    """
    unrecorded, reason = [], None
    for trial, row in zip(trials, rows):
        if reason is None:
            try:
                curves = row.get("curves") or {}
                trial.set_user_attr("row", {k: v for k, v in row.items() if k != "curves"})
                for k, v in curves.items():
                    trial.set_user_attr(f"curve:{k}", v)
                study.tell(trial, objective(row))
                continue
            except Exception as err:
                reason = _why(err)
        unrecorded.append(row)
    if unrecorded:
        path = save_unrecorded(unrecorded, store.path, fallback_name)
        raise UnrecordedResults(f"{len(unrecorded)} finished result(s) could not be recorded in "
                                f"'{store.path or store.url}' ({reason}); they are saved in {path}", path)


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
