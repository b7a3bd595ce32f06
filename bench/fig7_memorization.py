"""Fig. 7: search for a setting where a large lr memorizes with higher energy than a small lr's Fourier solution.

The paper (Fig. 7; Z127, n 3225 = 20%, Adam lr 1e-3, 2e-3, 5e-3): 1e-3 and 2e-3 end in Fourier
(generalizing) solutions of low energy, 5e-3 in memorization with higher energy. This script
searches CPU-sized settings (groups, train fraction as a multiple of p*, width K, weight decay,
budget) with an lr grid and several seeds. Each member ends ``general``, ``memorized`` or ``other``
(as in ``bench/fig6_lr_boundary.py``); its energy is the mean normalized node energy E(w/‖w‖) on
the train rows (docs/theory.md §4). A setting *shows Fig. 7* when for some lr_small < lr_large:
lr_small generalizes in a larger share of seeds, at least half of lr_large's seeds memorize, and the
median energy of lr_large's memorizing members exceeds that of lr_small's generalizing members.

    python bench/fig7_memorization.py --out results/fig7_search.jsonl

Rows go to ``--out`` (one JSON line per member; a rerun skips the members already there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fig6_lr_boundary import outcome, outcome_table  # noqa: E402
from fig8_fair import _load, run_points  # noqa: E402  (the shared population runner)

SETTING = ("group", "K", "weight_decay", "p_star_multiplier", "epochs")


def outcome_at(row: dict, t: int, general_acc: float = 0.95) -> str:
    """The member's class from its ``acc_curve`` at the last measured epoch <= t."""
    pts = [p for p in row["acc_curve"] if p[0] <= t]
    _, train_acc, test_acc = pts[-1]
    return outcome({"final_train_acc": train_acc, "final_test_acc": test_acc}, general_acc)


def equal_lr_time_table(rows: list[dict], general_acc: float = 0.95) -> list[str]:
    """Markdown lines: per setting and lr, the classes at epoch t = lr_min · epochs / lr.

    Adam's coupled decay and step both scale with lr, so a smaller lr covers the same path in
    more epochs; this compares every lr after the same lr × epochs (the smallest lr's whole budget).
    """
    settings: dict[tuple, list[dict]] = {}
    for r in rows:
        settings.setdefault(tuple(r["point"][k] for k in SETTING), []).append(r)
    lines = ["| " + " | ".join(SETTING) + " | lr | at epoch | general | memorized | other |",
             "|" + "---|" * (len(SETTING) + 5)]
    for setting, rs in settings.items():
        lr_min = min(r["point"]["lr"] for r in rs)
        for lr in sorted({r["point"]["lr"] for r in rs}):
            t = round(lr_min * setting[-1] / lr)
            cls = [outcome_at(r, t, general_acc) for r in rs if r["point"]["lr"] == lr]
            n = len(cls)
            lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in setting)
                         + f" | {lr:g} | {t} | {cls.count('general')}/{n} | {cls.count('memorized')}/{n} "
                         f"| {cls.count('other')}/{n} |")
    return lines


def shows_fig7(rows: list[dict], general_acc: float = 0.95) -> list[str]:
    """For one setting's rows (all lrs): the lr pairs that show Fig. 7's pattern, as text."""
    by_lr: dict[float, list[dict]] = {}
    for r in rows:
        by_lr.setdefault(r["point"]["lr"], []).append(r)
    found = []
    lrs = sorted(by_lr)
    for i, small in enumerate(lrs):
        for large in lrs[i + 1:]:
            cs = [outcome(r, general_acc) for r in by_lr[small]]
            cl = [outcome(r, general_acc) for r in by_lr[large]]
            share_s, share_l = cs.count("general") / len(cs), cl.count("general") / len(cl)
            e_gen = [r["energy_mean"] for r, c in zip(by_lr[small], cs) if c == "general"]
            e_mem = [r["energy_mean"] for r, c in zip(by_lr[large], cl) if c == "memorized"]
            if share_s > share_l and cl.count("memorized") >= len(cl) / 2 and e_gen and e_mem \
                    and statistics.median(e_mem) > statistics.median(e_gen):
                found.append(f"lr {small:g} general {share_s:.2f} (E {statistics.median(e_gen):.3g}) vs "
                             f"lr {large:g} general {share_l:.2f}, memorized {cl.count('memorized')}/{len(cl)} "
                             f"(E {statistics.median(e_mem):.3g})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--groups", nargs="+", default=["Z47", "Z71"])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1.2, 1.9],
                        help="train fraction as multiples of p* (the paper's Z127 at 20%% is 1.9 p*)")
    parser.add_argument("--Ks", type=int, nargs="+", default=[128])
    parser.add_argument("--weight_decays", type=float, nargs="+", default=[5e-5, 2e-4, 1e-3])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 5e-3, 1e-2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--general_acc", type=float, default=0.95)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--population_size", type=int, default=64)
    parser.add_argument("--out", default=None, help="JSONL file for the rows (appended; finished rows skipped)")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing; print the tables for every row in --out (the union of earlier grids)")
    args = parser.parse_args()

    points = [dict(group=g, K=K, epochs=args.epochs, optimizer="adam", p_star_multiplier=m, lr=lr, weight_decay=wd,
                   seed=s)
              for g in args.groups for K in args.Ks for m in args.multipliers for wd in args.weight_decays
              for lr in args.lrs for s in args.seeds]
    if args.report_only:
        rows = sorted(_load(args.out).values(), key=lambda r: tuple(r["point"][k] for k in SETTING + ("lr", "seed")))
    else:
        rows = run_points(points, args.out, args.population_size, args.eval_every, curves=True)
    print(f"\nAdam, seeds {sorted({r['seed'] for r in rows})}; general = final test acc >= {args.general_acc}, memorized = final train acc "
          ">= 0.99 and test acc < 0.5; E = mean normalized node energy on the train rows\n")
    print("\n".join(outcome_table(rows, SETTING + ("lr",), args.general_acc)))
    print("\nAt equal lr × epochs (each lr at epoch lr_min · epochs / lr):\n")
    print("\n".join(equal_lr_time_table(rows, args.general_acc)))
    print("\nSettings that show Fig. 7 (small lr generalizes more often, large lr memorizes with higher E):")
    settings: dict[tuple, list[dict]] = {}
    for r in rows:
        settings.setdefault(tuple(r["point"][k] for k in SETTING), []).append(r)
    any_found = False
    for setting, rs in settings.items():
        for text in shows_fig7(rs, args.general_acc):
            any_found = True
            print(f"  {dict(zip(SETTING, setting))}: {text}")
    if not any_found:
        print("  none")


if __name__ == "__main__":
    main()
