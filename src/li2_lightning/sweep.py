"""``li2 sweep FILE``: expand a YAML sweep, train it as populations, append results as JSON lines.

A sweep file::

    name: fig5_cpu
    results: results/fig5_cpu.jsonl   # default: the sweep file with suffix .jsonl
    population_size: 25               # most members trained together
    accelerator: auto                 # any Lightning accelerator
    fixed: {K: 256, lr: 1.0e-3, weight_decay: 2.0e-4, max_epochs: 1500}
    grid:                             # cartesian product, merged over `fixed`
      group: [Z23, Z41]
      p_star_multiplier: [0.5, 1.0, 2.0]
      seed: [0, 1, 2]
    # or `grids:` a list of such grids (their union), e.g. one per group family;
    # `points:` a list of explicit settings, each crossed with the grid(s)

Point settings (:data:`POINT_KEYS`) are the fields of ``MemberSettings`` (:data:`MEMBER_KEYS`),
``PopulationModule``'s shared arguments, the optimizer (:data:`OPTIMIZER_KEYS`: ``optimizer`` is
adam, adamw, sgd or muon, ``preset`` Muon's li2, keller or torch, and the other fields of
``OptimizerSpec``) and ``max_epochs``; ``seed`` is the init seed and ``split_seed`` defaults to it. Points that
share every setting except the per-member ones (:data:`MEMBER_KEYS`) are packed into one
population. Each finished point is appended to the results file as one JSON line with its ``id``
(a hash of its settings); a restarted sweep skips the ids already there, so a killed sweep loses at
most the populations that were running. Run ``li2 sweep FILE --dry-run`` to see the plan.

W&B: ``li2 sweep FILE --export-wandb OUT.yaml`` writes a W&B grid sweep over ``point_index``;
``wandb sweep OUT.yaml`` then ``wandb agent ID`` on each machine runs
``li2 sweep FILE --point_index=I`` per point (one member; results appended to the same JSONL file
and logged to the W&B run). The agents need network access to W&B; offline they cannot start.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

MEMBER_KEYS = ("seed", "split_seed", "train_fraction", "n_train", "p_star_multiplier", "lr",
               "weight_decay", "muon_lr", "V_init_scale")
#: settings of the population's OptimizerSpec (``optimizer`` is its name)
OPTIMIZER_KEYS = ("optimizer", "preset", "betas", "eps", "momentum", "nesterov", "ns_steps", "ns_dtype",
                  "adam_decoupled")
SHARED_KEYS = ("group", "K", "activation", "loss", "output_scale", "p_star_c", "max_epochs",
               "stop_at_test_acc", "check_every", "eval_every") + OPTIMIZER_KEYS
#: the model variants of docs/theory.md §10, shared by a population
SHARED_KEYS += ("hidden_layers", "residual", "complex_weights", "top_layer", "ridge_lambda")
POINT_KEYS = MEMBER_KEYS + SHARED_KEYS
FILE_KEYS = ("name", "results", "population_size", "accelerator", "devices", "precision", "fixed",
             "grid", "grids", "points", "description")
DEFAULT_MAX_EPOCHS = 1000
_SIZE_KEYS = ("train_fraction", "n_train", "p_star_multiplier")


def point_id(point: dict) -> str:
    """A stable id of a point's settings (12 hex digits of a SHA-1 of its sorted JSON)."""
    return hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]


def load_sweep(path: str | os.PathLike) -> dict:
    """Read and validate a sweep file; returns the parsed dict with defaults filled in.

    Raises:
        ValueError: on a missing file, unknown keys, or grid values that are not lists.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file '{path}' does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"sweep file '{path}' must hold a mapping with keys {list(FILE_KEYS)}")
    unknown = set(spec) - set(FILE_KEYS)
    if unknown:
        raise ValueError(f"sweep file '{path}': unknown keys {sorted(unknown)}; accepted: {list(FILE_KEYS)}")
    if "grid" in spec and "grids" in spec:
        raise ValueError(f"sweep file '{path}': give `grid` or `grids`, not both")
    spec.setdefault("name", path.stem)
    spec.setdefault("results", str(path.with_suffix(".jsonl")))
    spec.setdefault("population_size", 16)
    spec.setdefault("accelerator", "auto")
    if not isinstance(spec["population_size"], int) or spec["population_size"] < 1:
        raise ValueError(f"population_size={spec['population_size']!r} is not accepted; accepted: an integer >= 1")
    return spec


def expand(spec: dict) -> list[dict]:
    """All points of a sweep, in file order: (points × grid) merged over ``fixed``, duplicates dropped.

    Raises:
        ValueError: on an unknown point setting or a grid entry that is not a non-empty list.
    """
    fixed = dict(spec.get("fixed") or {})
    grids = spec.get("grids") or [spec.get("grid") or {}]
    explicit = spec.get("points") or [{}]
    points, seen = [], set()
    for grid in grids:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid entry {key}={values!r} is not accepted; accepted: a non-empty list")
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            for extra in explicit:
                point = {**fixed, **extra, **dict(zip(keys, combo))}
                _check_point(point)
                pid = point_id(point)
                if pid not in seen:
                    seen.add(pid)
                    points.append(point)
    return points


def _check_point(point: dict) -> None:
    unknown = set(point) - set(POINT_KEYS)
    if unknown:
        raise ValueError(f"sweep settings {sorted(unknown)} are not known; accepted: {list(POINT_KEYS)}")
    if "group" not in point:
        raise ValueError(f"point {point} has no `group`; set it in `fixed`, the grid or `points`")
    if sum(k in point for k in _SIZE_KEYS) > 1:
        raise ValueError(f"point {point} sets more than one of {list(_SIZE_KEYS)}")


def pack(points: list[dict], population_size: int) -> list[list[dict]]:
    """Split points into populations: same shared settings and the same kind of train size,
    sorted by train size within a population (less padding), at most ``population_size`` each."""
    buckets: dict[str, list[dict]] = {}
    for p in points:
        shared = {k: p.get(k) for k in SHARED_KEYS}
        shared["_size_key"] = next((k for k in _SIZE_KEYS if k in p), None)
        shared["_muon_lr"] = "muon_lr" in p
        buckets.setdefault(json.dumps(shared, sort_keys=True, default=str), []).append(p)
    out = []
    for members in buckets.values():
        size_key = next((k for k in _SIZE_KEYS if k in members[0]), None)
        if size_key:
            members = sorted(members, key=lambda p: p[size_key])
        out += [members[i : i + population_size] for i in range(0, len(members), population_size)]
    return out


def done_ids(results: str | os.PathLike) -> set[str]:
    """Ids of the points already in a results file (unparsable lines, e.g. a torn last line, are skipped)."""
    path = Path(results)
    if not path.is_file():
        return set()
    ids = set()
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def append_results(results: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows as JSON lines with one write and an fsync, so a kill cannot interleave them."""
    path = Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            text = "\n" + text  # a torn line from a killed writer stays on its own line
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def build_population(members: list[dict]):
    """A ``PopulationModule`` for points that share their non-member settings."""
    from li2_lightning.population import MemberSettings, OptimizerSpec, PopulationModule

    first = members[0]
    kwargs: dict[str, Any] = {k: first[k] for k in SHARED_KEYS if k in first and k not in
                              ("max_epochs",) + OPTIMIZER_KEYS}
    spec = {k: first[k] for k in OPTIMIZER_KEYS if k in first}
    if "optimizer" in spec:
        spec["name"] = spec.pop("optimizer")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    kwargs["optimizer"] = OptimizerSpec(**spec)
    kwargs["members"] = [MemberSettings(**{k: m[k] for k in MEMBER_KEYS if k in m}) for m in members]
    return PopulationModule(**kwargs)


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
    """Train one population; returns one result row per member (with ``id`` and ``point``)."""
    from li2_lightning.population import train_population

    t0 = time.time()
    module = build_population(members)
    max_epochs = int(members[0].get("max_epochs", DEFAULT_MAX_EPOCHS))
    label = f"{members[0]['group']} ×{len(members)}"
    rows = train_population(module, max_epochs,
                            accelerator=spec.get("accelerator", "auto"), devices=spec.get("devices", 1),
                            precision=spec.get("precision"),
                            callbacks=[_epoch_progress(bar, label, max_epochs)] if bar is not None else None)
    elapsed = time.time() - t0
    for point, row in zip(members, rows):
        if "p_star_multiplier" in point:
            row["p_star_multiplier"] = point["p_star_multiplier"]
        row.update(id=point_id(point), point=point, sweep=spec["name"], population_size=len(members),
                   population_time_s=round(elapsed, 3))
    return rows


def run_sweep(path: str | os.PathLike, results: Optional[str] = None, population_size: Optional[int] = None,
              accelerator: Optional[str] = None, limit: Optional[int] = None, progress: bool = True) -> int:
    """Run every pending point of a sweep file; returns the number of points trained now."""
    spec = load_sweep(path)
    if results:
        spec["results"] = results
    if population_size:
        spec["population_size"] = population_size
    if accelerator:
        spec["accelerator"] = accelerator
    points = expand(spec)
    done = done_ids(spec["results"])
    pending = [p for p in points if point_id(p) not in done]
    populations = pack(pending, spec["population_size"])
    if limit is not None:
        populations = populations[:limit]
    print(f"li2 sweep {spec['name']}: {len(points)} points, {len(points) - len(pending)} already in "
          f"{spec['results']}, {len(pending)} to run in {len(populations)} population(s)", file=sys.stderr)
    _quiet_lightning()
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(p) for p in populations), unit="pt", disable=not progress, file=sys.stderr)
    trained = 0
    for members in populations:
        rows = run_population(members, spec, bar if progress else None)
        append_results(spec["results"], rows)
        trained += len(rows)
        grokked = sum(r.get("epochs_to_test_acc_0.99") is not None for r in rows)
        bar.set_postfix_str(f"{members[0]['group']}: {grokked}/{len(rows)} to test acc 0.99")
        bar.update(len(rows))
    bar.close()
    return trained


def _quiet_lightning() -> None:
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")


def export_wandb(path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write a W&B sweep config that runs each point of ``path`` as one agent run."""
    n = len(expand(load_sweep(path)))
    config = {"name": load_sweep(path)["name"], "program": "li2", "method": "grid",
              "parameters": {"point_index": {"values": list(range(n))}},
              "command": ["li2", "sweep", str(path), "${args}"]}
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    return config


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


def main(argv: Optional[list[str]] = None) -> None:
    """``li2 sweep FILE [--results PATH] [--population-size N] [--accelerator A] [--dry-run] ...``."""
    parser = argparse.ArgumentParser(prog="li2 sweep", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="sweep YAML file")
    parser.add_argument("--results", help="results JSONL (default: the file's `results`)")
    parser.add_argument("--population-size", type=int, help="override the file's population_size")
    parser.add_argument("--accelerator", help="override the file's accelerator (cpu, gpu, auto, ...)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--limit", type=int, help="run at most this many populations, then stop")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export-wandb", metavar="OUT", help="write a W&B sweep config and exit")
    parser.add_argument("--point_index", "--point-index", type=int, help="run one point (W&B agent)")
    args = parser.parse_args(argv)
    try:
        import torch

        # Late in a run Adam's second moments and x² activations of dead nodes fall below 1e-38;
        # subnormal arithmetic on x86 CPUs then slowed a Z89 population from 0.4 s to 17 s an epoch.
        torch.set_flush_denormal(True)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.export_wandb:
            export_wandb(args.file, args.export_wandb)
            print(f"wrote {args.export_wandb}: `wandb sweep {args.export_wandb}`, then `wandb agent ID` per machine")
            return
        if args.point_index is not None:
            run_point(args.file, args.point_index, args.results)
            return
        if args.dry_run:
            spec = load_sweep(args.file)
            points = expand(spec)
            done = done_ids(args.results or spec["results"])
            pending = [p for p in points if point_id(p) not in done]
            pops = pack(pending, args.population_size or spec["population_size"])
            print(f"{spec['name']}: {len(points)} points, {len(points) - len(pending)} done, "
                  f"{len(pops)} populations to run: sizes {[len(p) for p in pops]}")
            return
        run_sweep(args.file, args.results, args.population_size, args.accelerator, args.limit,
                  progress=not args.no_progress)
    except ValueError as err:
        parser.exit(2, f"li2 sweep: error: {err}\n")
