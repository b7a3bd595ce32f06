"""The sweep worker: a sweep file opened on its store, and populations trained until no point waits."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from li2_lightning.sweeps.plan import build_population, groups, population_size_for
from li2_lightning.sweeps.rows import append_results, done_ids, point_row, read_rows
from li2_lightning.sweeps.spec import DEFAULT_MAX_EPOCHS, expand, load_sweep, point_id
from li2_lightning.sweeps.wandb_runs import log_to_wandb


def _quiet_lightning() -> None:
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")


def _epoch_progress(bar, label: str, max_epochs: int):
    """A callback that shows the running population's epoch in the sweep's progress bar."""
    import lightning.pytorch as pl

    class _Progress(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            e = trainer.current_epoch + 1
            if e % 10 == 0 or e == max_epochs:
                bar.set_postfix_str(f"{label}: epoch {e}/{max_epochs}", refresh=True)

    return _Progress()


def run_population(members: list[dict], spec: dict, bar=None) -> list[dict]:
    """Train one population; returns one result row per member.

    A row is ``PopulationModule.results()``'s with ``id``, ``point``, ``sweep``, the per-epoch
    ``curves`` (``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` as in
    ``lightning_metrics()``, float32 values, None where not measured), and ``diverged`` /
    ``outcome``: a member whose parameters or final train loss are not finite is ``diverged``
    (its accuracies mean nothing), the others ``finished``.
    """
    import torch

    from li2_lightning.population import train_population

    t0 = time.time()
    module = build_population(members)
    max_epochs = int(members[0].get("max_epochs", DEFAULT_MAX_EPOCHS))
    label = f"{members[0]['group']} ×{len(members)}"
    rows = train_population(module, max_epochs,
                            accelerator=spec.get("accelerator", "auto"), devices=spec.get("devices", 1),
                            precision=spec.get("precision"),
                            # across processes the Trainer is pickled: no progress bar callback then
                            callbacks=([_epoch_progress(bar, label, max_epochs)]
                                       if bar is not None and spec.get("devices", 1) in (1, None) else None))
    elapsed = time.time() - t0
    # (S, epochs) each; float32 values in their shortest decimal form (exact in float32, short JSON)
    curves = {k: [[float(str(x)) for x in member] for member in v.T.numpy()]
              for k, v in module.lightning_metrics().items()}
    for s, (point, row) in enumerate(zip(members, rows)):
        finite = bool(torch.isfinite(module.W[s]).all() and torch.isfinite(module.V[s]).all())
        row["curves"] = {k: [None if math.isnan(x) or math.isinf(x) else x for x in c[s]] for k, c in curves.items()}
        rows[s] = point_row(point, row, spec, finite, len(members), elapsed)
    return rows


class Sweep:
    """A sweep file opened on its store: the studies (one per group of compatible points)."""

    def __init__(self, path: str | os.PathLike, storage: Optional[str] = None, population_size: Optional[int] = None,
                 accelerator: Optional[str] = None, results: Optional[str] = None, heartbeat_interval: int = 20,
                 grace_period: int = 60, wandb_project: Optional[str] = None) -> None:
        from li2_lightning import study as st

        spec = load_sweep(path)
        if results:
            spec["results"] = str(Path(results).resolve())
        if population_size:
            spec["population_size"] = population_size
        if accelerator:
            spec["accelerator"] = accelerator
        if wandb_project is not None:  # "": the file's project (or li2)
            spec["wandb"] = {**(spec.get("wandb") or {}), **({"project": wandb_project} if wandb_project else {})}
        self.spec = spec
        self.points = expand(spec)
        self.index = {point_id(p): i for i, p in enumerate(self.points)}
        url = storage or st.default_store_url(Path(spec["results"]))
        self.store = st.open_store(url, heartbeat_interval, grace_period)  # StoreError before any training
        old = {k: v for k, v in read_rows(spec["results"]).items() if k in self.index}
        self.studies: list[tuple[Any, list[dict]]] = []
        for key, members in groups(self.points).items():
            entries = [(self.index[point_id(p)], point_id(p), p) for p in members]
            study = st.ensure_study(self.store, st.study_name(spec["name"], key), entries, old)
            self.studies.append((study, members))
        self._sizes: dict[int, int] = {}

    def size(self, i: int) -> int:
        """Population size of study i: the file's, or from free memory."""
        if i not in self._sizes:
            fixed = self.spec.get("population_size")
            members = self.studies[i][1]
            device = "cuda" if self.spec.get("accelerator") in ("gpu", "cuda") else "cpu"
            self._sizes[i] = fixed or population_size_for(members, device=device)
        return self._sizes[i]

    def rows(self) -> list[dict]:
        """One row per finished point (the first COMPLETE trial of each), in file order."""
        from li2_lightning.study import completed_rows

        out: dict[str, dict] = {}
        for study, _ in self.studies:
            for row in completed_rows(study):
                out.setdefault(row["id"], row)
        return sorted(out.values(), key=lambda r: self.index.get(r["id"], 0))

    def export(self, out: Optional[str | os.PathLike] = None) -> Path:
        """Write the finished rows as JSON lines to ``out`` (default ``results``), keeping the rows of
        other sweeps that share the file; written to a temporary file and renamed."""
        from li2_lightning.study import write_jsonl

        path = Path(out or self.spec["results"])
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.rows()
        others = [r for k, r in read_rows(path).items() if k not in self.index]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write_jsonl(tmp, others + mine)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def pending(self) -> int:
        """Points not yet finished."""
        from optuna.trial import TrialState

        done = {t.user_attrs.get("point_id") for study, _ in self.studies
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        return sum(pid not in done for pid in self.index)

    def work(self, limit: Optional[int] = None, progress: bool = True, timings: Optional[dict] = None) -> int:
        """Train populations until no point is waiting or running; returns the points trained here.

        A worker with nothing to ask waits for the running trials of others, failing and re-enqueueing
        those whose heartbeats stopped, so a killed worker's points are finished here.

        Args:
            limit: stop after this many populations.
            timings: if given, gets ``{"store": s, "train": s}``: seconds in Optuna calls and in training.
        """
        _quiet_lightning()
        from tqdm.auto import tqdm

        timings = {} if timings is None else timings
        timings.setdefault("store", 0.0)
        timings.setdefault("train", 0.0)
        bar = tqdm(total=len(self.points), initial=len(self.points) - self.pending(), unit="pt",
                   disable=not progress, file=sys.stderr)
        trained = populations = 0
        active = list(range(len(self.studies)))
        drained: set[int] = set()
        while active and (limit is None or populations < limit):
            t0 = time.perf_counter()
            study, trials = self._ask(active, drained)
            timings["store"] += time.perf_counter() - t0
            if not trials:  # nothing waiting: reclaim dead workers' points or wait for the live ones
                t0 = time.perf_counter()
                active, waiting = self._reclaim(active)
                drained.clear()  # reclaimed points may be waiting again anywhere
                timings["store"] += time.perf_counter() - t0
                if active and not waiting:
                    time.sleep(min(self.store.heartbeat_interval, 2))
                continue
            rows = self._train(study, trials, bar if progress else None, timings)
            self._log_wandb(rows)
            trained += len(rows)
            populations += 1
            grokked = sum(r.get("epochs_to_test_acc_0.99") is not None for r in rows)
            bar.set_postfix_str(f"{trials[0].user_attrs['point']['group']}: {grokked}/{len(rows)} to test acc 0.99")
            bar.update(len(rows))
        bar.close()
        return trained

    def _ask(self, active: list[int], drained: set[int]) -> tuple[Any, list]:
        """Waiting trials of the first study among ``active`` that has any (those ``drained`` asked
        last; a study that comes up empty is added to it); ``(None, [])`` when none has."""
        from li2_lightning import study as st

        active.sort(key=lambda i: i in drained)  # studies that just came up empty are asked last
        for i in active:
            study, _ = self.studies[i]
            try:
                trials = st.ask_batch(study, self.store, self.size(i))
            except (ValueError, st.StoreError):
                raise
            except Exception as err:  # nothing trained yet, nothing lost: say which store failed
                raise st.StoreError(f"results store '{self.store.path or self.store.url}' failed while "
                                    f"asking for points: {st._why(err)}") from err
            if trials:
                return study, trials
            drained.add(i)
        return None, []

    def _reclaim(self, active: list[int]) -> tuple[list[int], bool]:
        """Re-enqueue dead workers' points; returns the studies still waiting or running, and
        whether any point waits."""
        from li2_lightning import study as st

        for i in active:
            st.reclaim_stale(self.store, self.studies[i][0])
        live = []
        for i in active:
            c = st.counts(self.studies[i][0])
            if c.get("WAITING") or c.get("RUNNING"):
                live.append(i)
        return live, any(st.counts(self.studies[i][0]).get("WAITING") for i in live)

    def _train(self, study, trials: list, bar, timings: dict) -> list[dict]:
        """Train the trials' points as one population under a heartbeat and tell the store their rows."""
        from li2_lightning import study as st

        members = [t.user_attrs["point"] for t in trials]
        with st.Heartbeat(self.store, study) as hb:
            hb.trial_ids = [t._trial_id for t in trials]
            t0 = time.perf_counter()
            if self.spec.get("policy") is not None:  # each point told as it stops; its slot asks the next
                from li2_lightning.population_policy import run_trials

                rows = run_trials(study, self.store, trials, hb, self.spec)
                timings["train"] += time.perf_counter() - t0
            else:
                rows = run_population(members, self.spec, bar)
                timings["train"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                st.tell_rows(study, self.store, trials, rows, self.spec["name"])  # raises UnrecordedResults
                timings["store"] += time.perf_counter() - t0
        return rows

    def _log_wandb(self, rows: list[dict]) -> None:
        """Log the rows to W&B (after the store has them: W&B is a view, not the record)."""
        if self.spec.get("wandb") is None:
            return
        try:
            log_to_wandb(rows, self.spec)
        except ValueError:
            raise
        except Exception as err:
            print(f"li2 sweep: W&B runs not written ({type(err).__name__}: {err}); the results are in "
                  "the store", file=sys.stderr)

def check_export_target(path: str | os.PathLike) -> None:
    """Fail now, not after training, when the results file cannot be written.

    Raises:
        ValueError: ``path`` exists and is not a regular file, or its folder cannot be made or
            written (the message names it).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"results={str(path)!r} exists and is not a file; accepted: a file path (move "
                         "what is there, or give another with --results)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe"):
            pass
    except OSError as err:
        raise ValueError(f"results={str(path)!r}: its folder cannot be written ({err}); accepted: a path in a "
                         "writable folder (--results)") from err


def run_sweep(path: str | os.PathLike, results: Optional[str] = None, population_size: Optional[int] = None,
              accelerator: Optional[str] = None, limit: Optional[int] = None, progress: bool = True,
              storage: Optional[str] = None, workers: int = 1, heartbeat_interval: int = 20,
              grace_period: int = 60, export: bool = True, threads: Optional[int] = None,
              wandb_project: Optional[str] = None, devices: Optional[int] = None) -> int:
    """Run every pending point of a sweep file; returns the number of points trained by this process.

    ``devices`` > 1 (or the file's ``devices``) spreads each population's members over that many
    devices or processes (``population_ddp``; populations without a ``policy``).

    With ``workers`` > 1, starts that many worker processes (this process trains nothing) and
    returns 0; their exit status is checked.

    Raises:
        ValueError: on a wrong sweep file. StoreError: the store cannot be opened or written.
        UnrecordedResults: a result could not be told (saved to the file it names).
        RuntimeError: a worker process failed.
    """
    sweep = Sweep(path, storage, population_size, accelerator, results, heartbeat_interval, grace_period,
                  wandb_project)
    spec = sweep.spec
    if export:
        check_export_target(spec["results"])  # before training, not after
    if devices:
        spec["devices"] = devices
    print(f"li2 sweep {spec['name']}: {len(sweep.points)} points in {len(sweep.studies)} group(s), "
          f"{sweep.pending()} to run; store {sweep.store.path or sweep.store.url}", file=sys.stderr)
    trained = 0
    if workers > 1:
        cmd = [sys.executable, "-m", "li2_lightning.sweep", spec["_file"], "--storage", sweep.store.url,
               "--results", spec["results"], "--no-export", "--heartbeat-interval", str(heartbeat_interval),
               "--grace-period", str(grace_period)] + (["--no-progress"] if not progress else [])
        for flag, value in (("--population-size", population_size), ("--accelerator", accelerator),
                            ("--limit", limit), ("--threads", threads), ("--wandb", wandb_project),
                            ("--devices", devices)):
            if value is not None:
                cmd += [flag, str(value)]
        procs = [subprocess.Popen(cmd) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"worker exit statuses {codes}; rerun `li2 sweep {path}` to finish the sweep")
    else:
        trained = sweep.work(limit, progress)
    if export:
        out = sweep.export()
        left = sweep.pending()
        print(f"li2 sweep {spec['name']}: {len(sweep.points) - left} of {len(sweep.points)} points finished, "
              f"exported to {out}", file=sys.stderr)
    return trained


def run_point(path: str | os.PathLike, index: int, results: Optional[str] = None) -> dict:
    """Run point ``index`` of a sweep alone (a W&B agent's unit of work); log it to W&B if available."""
    spec = load_sweep(path)
    if results:
        spec["results"] = results
    points = expand(spec)
    if not 0 <= index < len(points):
        raise ValueError(f"point_index={index} is out of range; the sweep has points 0..{len(points) - 1}")
    point = points[index]
    if point_id(point) in done_ids(spec["results"]):
        print(f"point {index} ({point_id(point)}) is already in {spec['results']}", file=sys.stderr)
        return {}
    _quiet_lightning()
    (row,) = run_population([point], spec)
    append_results(spec["results"], [row])
    try:
        import wandb
    except ImportError:  # W&B not installed: results are in the JSONL file only
        return row
    if wandb.run is not None or os.environ.get("WANDB_SWEEP_ID"):
        run = wandb.init(config=point, job_type="li2-sweep-point")
        run.summary.update({k: v for k, v in row.items() if isinstance(v, (int, float, str, type(None)))})
        run.finish()
    return row
