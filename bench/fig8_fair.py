"""Fig. 8, fair: Adam against Muon, each at its own best learning rate from a grid (issue 11).

Z71, n 2016 (40%), a small hidden layer (K 128), weight decay 2e-4, several seeds, a fixed budget of
full-batch epochs. Adam runs on W and V with lr from ``--adam_lrs``; Muon (``--presets``, li2 and
keller) runs on W with its own lr from ``--muon_lrs`` and Adam on V with lr from ``--muon_adam_lrs``
(``MemberSettings.muon_lr`` and ``lr``). Every grid point trains all seeds as members of one
:class:`~li2_lightning.population.PopulationModule`.

"Best" is the grid point with the smallest median number of epochs to test accuracy 0.99 (a seed
that never gets there counts as infinitely slow; ties go to the lower median final test loss). For
each optimizer at its best the script prints epochs to test accuracy 0.99 and final test loss as
medians [min, max], then every grid point as a table. Rows go to ``--out`` (JSONL, one per member);
a rerun skips the members already there, so a killed run resumes.

    python bench/fig8_fair.py --seeds 1 2 3 4 5 --out results/fig8_fair.jsonl

The population runner here (:func:`run_points`) and the table helpers are also used by
``bench/fig6_lr_boundary.py`` and ``bench/fig7_memorization.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings
from typing import Iterable, Optional, Sequence

# member settings a point may carry; the rest of a point is shared by its population
MEMBER_KEYS = ("seed", "lr", "muon_lr", "weight_decay", "train_fraction", "n_train", "p_star_multiplier",
               "V_init_scale")
SHARED_KEYS = ("group", "K", "epochs", "optimizer", "preset")


def point_id(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def _load(out: Optional[str]) -> dict[str, dict]:
    if not out or not os.path.exists(out):
        return {}
    rows = {}
    with open(out) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[point_id(row["point"])] = row
    return rows


def run_points(points: Sequence[dict], out: Optional[str], population_size: int = 64, eval_every: int = 1,
               analyze: bool = True, curves: bool = False, log=print) -> list[dict]:
    """Train every point not yet in ``out``; return one result row per point (in order).

    A point is a dict of :data:`SHARED_KEYS` (one population each) and :data:`MEMBER_KEYS`. Points
    with equal shared settings and train-size form train together, ``population_size`` at most.
    Each row is ``PopulationModule.results()``'s, plus ``point``, ``min_test_loss`` (lowest measured
    test loss over training), ``epoch_min_test_loss`` and ``population_time_s``; with ``curves``
    also ``acc_curve``, ``[[t, train acc, test acc at θ_t], ...]`` at the measured t.
    """
    import lightning.pytorch as pl  # noqa: F401  (imported here so --help stays fast)
    import torch

    from li2_lightning.population import MemberSettings, OptimizerSpec, PopulationModule, train_population

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # Adam's second moments of dead nodes go subnormal late in training
    warnings.filterwarnings("ignore")
    done = _load(out)
    todo: dict[tuple, list[dict]] = {}
    for p in points:
        if point_id(p) in done:
            continue
        size_form = tuple(k for k in ("train_fraction", "n_train", "p_star_multiplier") if p.get(k) is not None)
        key = tuple(p.get(k) for k in SHARED_KEYS) + tuple((k, p[k]) for k in size_form)
        todo.setdefault(key, []).append(p)
    for key, pts in todo.items():
        for start in range(0, len(pts), population_size):
            chunk = pts[start:start + population_size]
            p0 = chunk[0]
            members = [MemberSettings(**{k: p[k] for k in MEMBER_KEYS if p.get(k) is not None}) for p in chunk]
            spec = OptimizerSpec(p0["optimizer"], preset=p0.get("preset") or "li2")
            t0 = time.time()
            module = PopulationModule(p0["group"], p0["K"], members=members, optimizer=spec, eval_every=eval_every,
                                      analyze=analyze)
            rows = train_population(module, p0["epochs"], accelerator="cpu")
            elapsed = time.time() - t0
            hist = module.history()  # (T+1, S, 4), NaN where not measured
            test_loss = hist[:, :, 2]
            for s, (p, row) in enumerate(zip(chunk, rows)):
                col = test_loss[:, s]
                ok = ~torch.isnan(col)
                tmin = int(torch.where(ok, col, torch.full_like(col, math.inf)).argmin()) if bool(ok.any()) else None
                row.update(point=p, min_test_loss=None if tmin is None else float(col[tmin]),
                           epoch_min_test_loss=tmin, population_time_s=round(elapsed, 1))
                if curves:
                    row["acc_curve"] = [[t, round(float(hist[t, s, 1]), 4), round(float(hist[t, s, 3]), 4)]
                                        for t in ok.nonzero()[:, 0].tolist()]
                done[point_id(p)] = row
                if out:
                    with open(out, "a") as f:
                        f.write(json.dumps(row, sort_keys=True) + "\n")
            log(f"trained {len(chunk)} members {dict(zip(SHARED_KEYS, key))} in {elapsed:.0f} s", flush=True)
    return [done[point_id(p)] for p in points]


def med_range(values: Iterable, fmt: str = ".3g") -> str:
    """'median [min, max]' over the values that are not None, '(k never)' for the Nones."""
    values = list(values)
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return "never"
    missing = len(values) - len(vals)
    text = f"{statistics.median(vals):{fmt}} [{vals[0]:{fmt}}, {vals[-1]:{fmt}}]"
    return text + (f" ({missing} never)" if missing else "")


def median_inf(values: Iterable) -> float:
    """Median with None counted as +inf (a seed that never reaches a threshold is the slowest)."""
    return statistics.median(math.inf if v is None else v for v in values)


def _label(p: dict) -> str:
    if p["optimizer"] == "muon":
        return f"muon-{p.get('preset', 'li2')} W lr {p['muon_lr']:g}, V Adam lr {p['lr']:g}"
    return f"{p['optimizer']} lr {p['lr']:g}"


def grid_table(rows: list[dict]) -> tuple[list[str], dict[str, list[dict]]]:
    """Markdown lines, one per grid point (rows grouped by label), and the groups."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_label(r["point"]), []).append(r)
    lines = ["| optimizer, lr | seeds | epochs to test acc 0.99 | final test loss | min test loss "
             "| final test acc | coverage |", "|---|---|---|---|---|---|---|"]
    for label, rs in groups.items():
        lines.append(f"| {label} | {len(rs)} | {med_range(r['epochs_to_test_acc_0.99'] for r in rs)} "
                     f"| {med_range(r['final_test_loss'] for r in rs)} | {med_range(r['min_test_loss'] for r in rs)} "
                     f"| {med_range(r['final_test_acc'] for r in rs)} | {med_range([r.get('coverage') for r in rs], '.2f')} |")
    return lines, groups


def stable(rs: list[dict]) -> bool:
    """Every seed still at test accuracy >= 0.99 at the end (a run that groks and then diverges is not best)."""
    return all(r["final_test_acc"] is not None and r["final_test_acc"] >= 0.99 - 1e-6 for r in rs)


def best(groups: dict[str, list[dict]], by: str = "epochs") -> tuple[str, list[dict]]:
    """The stable group (:func:`stable`) with the smallest median epochs to test acc 0.99 (None = inf;
    ties: lower median final test loss), or with ``by="loss"`` the smallest median final test loss."""
    def key(kv):
        rs = kv[1]
        epochs = median_inf(r["epochs_to_test_acc_0.99"] for r in rs)
        loss = median_inf(r["final_test_loss"] for r in rs)
        return (not stable(rs),) + ((epochs, loss) if by == "epochs" else (loss, epochs))
    return min(groups.items(), key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--group", default="Z71")
    parser.add_argument("--n_train", type=int, default=2016)
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--weight_decay", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--adam_lrs", type=float, nargs="*", default=[1e-3, 2e-3, 3e-3, 5e-3, 1e-2])
    parser.add_argument("--muon_lrs", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.1],
                        help="Muon's lr on W")
    parser.add_argument("--muon_adam_lrs", type=float, nargs="*", default=[1e-3, 3e-3],
                        help="the Adam lr on V under Muon")
    parser.add_argument("--presets", nargs="*", default=["li2", "keller"], help="Muon presets")
    parser.add_argument("--eval_every", type=int, default=1)
    parser.add_argument("--population_size", type=int, default=64)
    parser.add_argument("--out", default=None, help="JSONL file for the rows (appended; finished rows skipped)")
    args = parser.parse_args()

    base = dict(group=args.group, K=args.K, epochs=args.epochs, n_train=args.n_train, weight_decay=args.weight_decay)
    points = [dict(base, optimizer="adam", lr=lr, seed=s) for lr in args.adam_lrs for s in args.seeds]
    points += [dict(base, optimizer="muon", preset=pr, lr=alr, muon_lr=mlr, seed=s)
               for pr in args.presets for mlr in args.muon_lrs for alr in args.muon_adam_lrs for s in args.seeds]
    rows = run_points(points, args.out, args.population_size, args.eval_every)

    print(f"\n{args.group}, n {args.n_train}, K {args.K}, wd {args.weight_decay}, {args.epochs} epochs, "
          f"seeds {args.seeds}; median [min, max]\n")
    lines, groups = grid_table(rows)
    print("\n".join(lines))
    print("\nEach optimizer at its best lr among the grid points where every seed ends at test acc >= 0.99:")
    families: dict[str, dict[str, list[dict]]] = {}
    for label, rs in groups.items():
        p = rs[0]["point"]
        fam = p["optimizer"] + (f"-{p.get('preset')}" if p["optimizer"] == "muon" else "")
        families.setdefault(fam, {})[label] = rs
    for by, text in (("epochs", "smallest median epochs to test acc 0.99"), ("loss", "smallest median final test loss")):
        print(f"\nbest = {text}\n")
        print("| optimizer | best lr | epochs to test acc 0.99 | final test loss | min test loss |")
        print("|---|---|---|---|---|")
        for fam, gs in families.items():
            label, rs = best(gs, by)
            print(f"| {fam} | {label} | {med_range(r['epochs_to_test_acc_0.99'] for r in rs)} "
                  f"| {med_range(r['final_test_loss'] for r in rs)} | {med_range(r['min_test_loss'] for r in rs)} |")


if __name__ == "__main__":
    main()
