"""``li2 sweep FILE``: expand a YAML sweep and train it as populations, bookkept by Optuna.

A sweep file::

    name: fig5_cpu
    results: ../results/fig5_cpu.jsonl  # relative to THIS file's folder; default: FILE with suffix .jsonl
    population_size: 25               # most members trained together (default: from free memory)
    accelerator: auto                 # any Lightning accelerator
    policy: {mode: stop-done-and-stalled, check_every: 10, confirm: 5}  # optional, see below
    fixed: {K: 256, lr: 1.0e-3, weight_decay: 2.0e-4, max_epochs: 1500}
    grid:                             # cartesian product, merged over `fixed`
      group: [Z23, Z41]
      p_star_multiplier: [0.5, 1.0, 2.0]
      seed: [0, 1, 2]
    # or `grids:` a list of such grids (their union), e.g. one per group family;
    # `points:` a list of explicit settings, each crossed with the grid(s)

Point settings are named as in the training config (:data:`CONFIG_KEYS`: ``seed_everything``,
``trainer.max_epochs``, ``data.group``, ``data.train_fraction``, ``model.K``, ``model.activation``,
``model.optimizer.class_path``, ``model.optimizer.init_args.lr`` ...), so a point reads like the
``li2 fit`` run that reproduces it (``li2 sweep FILE --fit-command I`` prints that command). The short
keys below are accepted as aliases, and points are stored with them (their ids do not change).
Short point settings (:data:`POINT_KEYS`) are the fields of ``MemberSettings`` (:data:`MEMBER_KEYS`),
``PopulationModule``'s shared arguments, the optimizer (:data:`OPTIMIZER_KEYS`: ``optimizer`` is
adam, adamw, sgd or muon, ``preset`` Muon's li2, keller or torch, and the other fields of
``OptimizerSpec``) and ``max_epochs``; ``seed`` is the init seed and ``split_seed`` defaults to it.
Every value is checked when the file is read; a wrong one is reported with the file, the key and
what is accepted.

Bookkeeping (:mod:`li2_lightning.study`): points that share every setting except the per-member ones
form one Optuna study; workers ask up to ``population_size`` waiting trials of a study, train them
as one population and tell each its result row and per-epoch curves. The store is an SQLite file
beside ``results`` (``x.jsonl`` -> ``x.db``), resolved from the sweep file's folder, so a sweep run
from any folder finds its finished points; ``--storage journal:PATH`` or ``--storage URL``
(PostgreSQL, MySQL) for workers on several machines. ``--workers N`` starts N local workers. Any
number of ``li2 sweep`` processes may run one sweep: each point is trained once; a killed worker's
points are enqueued again once its heartbeats stop (``--grace-period``), and finished by the others
or a rerun. The store is checked for writes before anything trains; a result the store refuses
(disk full) is saved to a JSONL file whose path is printed, and the exit status is 3.

``policy:`` (a :class:`~li2_lightning.population_policy.StopPolicy`; default none, full curves)
tracks each member's stage (docs/theory.md §7) every ``check_every`` of its epochs and, with
``stop-done`` or ``stop-done-and-stalled``, stops a member that is done (or stalled at ``confirm``
consecutive checks); its result is told to the store at once (``stop_reason``, ``stop_epoch``,
metrics at the stop) and the next waiting point of the study takes its slot.

When the sweep is done, every finished point is exported to ``results`` as one JSON line (also
``--export OUT.jsonl``), the file ``li2 report`` reads; rows already in ``results`` when the store is
created are taken over as finished. ``li2 sweep FILE --dry-run`` shows the plan.

W&B: with ``--wandb [PROJECT]`` or ``wandb: {project: ...}`` in the file, each finished point becomes its
own W&B run (config in the training config's keys, history its per-epoch curves by ``epoch``, group
the sweep's name, job type ``sweep-point``), so W&B's tables, parallel coordinates and grouping work
on a sweep; the store stays the record. Agents instead: ``li2 sweep FILE --export-wandb OUT.yaml`` writes a W&B grid sweep over ``point_index``;
``wandb sweep OUT.yaml`` then ``wandb agent ID`` on each machine runs
``li2 sweep FILE --point_index=I`` per point (one member; its row appended to ``results`` and logged
to the W&B run). The agents need network access to W&B; offline they cannot start.

Layout: :mod:`li2_lightning.sweeps.spec` (the file, its points), :mod:`~li2_lightning.sweeps.plan`
(groups and populations), :mod:`~li2_lightning.sweeps.rows` (result rows and JSONL),
:mod:`~li2_lightning.sweeps.worker` (:class:`Sweep`, :func:`run_sweep`) and
:mod:`~li2_lightning.sweeps.wandb_runs`; this module is the command line and re-exports their names.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from li2_lightning.sweeps.plan import build_population, group_key, groups, pack, population_size_for
from li2_lightning.sweeps.rows import append_results, done_ids, point_row, read_rows
from li2_lightning.sweeps.spec import (CONFIG_KEYS, DEFAULT_MAX_EPOCHS, DEFAULT_POPULATION_CAP, FILE_KEYS,
                                       MEMBER_KEYS, OPTIMIZER_CLASSES, OPTIMIZER_KEYS, POINT_KEYS,
                                       POPULATION_ONLY_KEYS, SHARED_KEYS, check_value, config_of, expand,
                                       fit_args, fit_command, load_sweep, point_id, short_setting)
from li2_lightning.sweeps.wandb_runs import export_wandb, log_to_wandb
from li2_lightning.sweeps.worker import Sweep, run_point, run_population, run_sweep

__all__ = ["CONFIG_KEYS", "DEFAULT_MAX_EPOCHS", "DEFAULT_POPULATION_CAP", "FILE_KEYS", "MEMBER_KEYS",
           "OPTIMIZER_CLASSES", "OPTIMIZER_KEYS", "POINT_KEYS", "POPULATION_ONLY_KEYS", "SHARED_KEYS", "Sweep",
           "append_results", "build_population", "check_value", "config_of", "done_ids", "dry_run", "expand",
           "export_wandb", "fit_args", "fit_command", "group_key", "groups", "load_sweep", "log_to_wandb", "main",
           "pack", "point_id", "point_row", "population_size_for", "read_rows", "run_point", "run_population",
           "run_sweep", "short_setting"]


def dry_run(path: str | os.PathLike, population_size: Optional[int] = None) -> str:
    """The plan: points, groups, population sizes (nothing is opened or written)."""
    spec = load_sweep(path)
    points = expand(spec)
    done = done_ids(spec["results"])
    lines = [f"{spec['name']}: {len(points)} points in {len(groups(points))} group(s); "
             f"{sum(point_id(p) in done for p in points)} already in {spec['results']}"]
    for members in groups(points).values():
        S = population_size or spec.get("population_size") or population_size_for(members)
        lines.append(f"  {members[0]['group']} K={members[0].get('K', 512)}: {len(members)} points, "
                     f"populations of {S}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The ``li2 sweep`` command line."""
    parser = argparse.ArgumentParser(prog="li2 sweep", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="sweep YAML file")
    parser.add_argument("--results", help="results JSONL (default: the file's `results`)")
    parser.add_argument("--storage", help="Optuna store: sqlite:///PATH (default: beside results), "
                                          "journal:PATH, or a database URL")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: this one)")
    parser.add_argument("--export", metavar="OUT", help="write the finished points as JSON lines to OUT and exit")
    parser.add_argument("--population-size", type=int, help="override the file's population_size")
    parser.add_argument("--accelerator", help="override the file's accelerator (cpu, gpu, auto, ...)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--devices", type=int, help="spread each population over N devices or processes "
                                                    "(override the file's devices; default 1)")
    parser.add_argument("--limit", type=int, help="run at most this many populations, then stop")
    parser.add_argument("--heartbeat-interval", type=int, default=20, help="seconds between heartbeats")
    parser.add_argument("--grace-period", type=int, default=60,
                        help="seconds without heartbeat after which a worker counts as dead")
    parser.add_argument("--no-export", action="store_true", help="do not rewrite `results` at the end")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export-wandb", metavar="OUT", help="write a W&B sweep config and exit")
    parser.add_argument("--point_index", "--point-index", type=int, help="run one point (W&B agent)")
    parser.add_argument("--wandb", nargs="?", const="", metavar="PROJECT",
                        help="log each finished point as its own W&B run (project default: the file's `wandb:`, else li2)")
    parser.add_argument("--fit-command", type=int, metavar="I",
                        help="print the `li2 fit` command line that reruns point I alone, and exit")
    return parser


def _dispatch(args: argparse.Namespace) -> None:
    """Run what the parsed command line asks: one of the single actions, else the sweep."""
    if args.export_wandb:
        export_wandb(args.file, args.export_wandb)
        print(f"wrote {args.export_wandb}: `wandb sweep {args.export_wandb}`, then `wandb agent ID` per machine")
        return
    if args.fit_command is not None:
        print(fit_command(args.file, args.fit_command))
        return
    if args.point_index is not None:
        run_point(args.file, args.point_index, args.results)
        return
    if args.dry_run:
        print(dry_run(args.file, args.population_size))
        return
    if args.export:
        sweep = Sweep(args.file, args.storage, results=args.results, heartbeat_interval=args.heartbeat_interval,
                      grace_period=args.grace_period)
        out = sweep.export(args.export)
        print(f"wrote {len(sweep.rows())} rows to {out}", file=sys.stderr)
        return
    run_sweep(args.file, args.results, args.population_size, args.accelerator, args.limit,
              progress=not args.no_progress, storage=args.storage, workers=args.workers,
              heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
              export=not args.no_export, threads=args.threads, wandb_project=args.wandb,
              devices=args.devices)


def main(argv: Optional[list[str]] = None) -> None:
    """``li2 sweep FILE [--workers N] [--storage URL] [--export OUT] [--dry-run] ...``."""
    from li2_lightning.study import StoreError, UnrecordedResults

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        import torch

        # Late in a run Adam's second moments and x² activations of dead nodes fall below 1e-38;
        # subnormal arithmetic on x86 CPUs then slowed a Z89 population from 0.4 s to 17 s an epoch.
        torch.set_flush_denormal(True)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.workers < 1:
            raise ValueError(f"--workers={args.workers} is not accepted; accepted: an integer >= 1")
        _dispatch(args)
    except (ValueError, StoreError) as err:
        parser.exit(2, f"li2 sweep: error: {err}\n")
    except UnrecordedResults as err:
        parser.exit(3, f"li2 sweep: error: {err}\n")
    except RuntimeError as err:
        parser.exit(1, f"li2 sweep: error: {err}\n")


if __name__ == "__main__":
    main()
