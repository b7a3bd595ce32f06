"""Fig. 6: near the critical train fraction, how often each learning rate ends generalizing (issue 11).

For each group Z_M and train fraction m · p* (p* = c ln M / M, ``data.critical_fraction``), many
seeds train with Adam at each learning rate of a grid for a fixed budget of full-batch epochs. Each
member ends in one of three classes (final values, at the end of the budget):

- ``general``: test accuracy >= ``--general_acc`` (0.95);
- ``memorized``: train accuracy >= 0.99 and test accuracy < 0.5;
- ``other``: neither (not fitted yet, or part way to generalizing).

The table gives, per group, multiplier and lr, the share of seeds in each class, the median epochs
to test accuracy 0.99 of those that got there, and the median mean node energy E(w/‖w‖) on the
train rows of the generalizing and the memorizing members (docs/theory.md §4). The paper (Fig. 6;
Z23, Z71, Z127, K 1024): smaller learning rates end in generalizing solutions more often.

    python bench/fig6_lr_boundary.py --out results/fig6_lr_boundary.jsonl

Rows go to ``--out`` (one JSON line per member; a rerun skips the members already there).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fig8_fair import med_range, run_points  # noqa: E402  (the shared population runner)

MEMORIZED_TRAIN_ACC, MEMORIZED_TEST_ACC = 0.99, 0.5


def outcome(row: dict, general_acc: float = 0.95) -> str:
    """'general', 'memorized' or 'other' from a member's final accuracies."""
    if row["final_test_acc"] >= general_acc:
        return "general"
    if row["final_train_acc"] >= MEMORIZED_TRAIN_ACC and row["final_test_acc"] < MEMORIZED_TEST_ACC:
        return "memorized"
    return "other"


def outcome_table(rows: list[dict], keys: tuple[str, ...], general_acc: float = 0.95) -> list[str]:
    """Markdown lines: per setting (``keys`` of the point), the outcome shares and energies."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["point"].get(k) for k in keys), []).append(r)
    lines = ["| " + " | ".join(keys) + " | seeds | general | memorized | other | epochs to test acc 0.99 "
             "| E generalizing | E memorizing | final test acc |",
             "|" + "---|" * (len(keys) + 8)]
    for setting, rs in groups.items():
        cls = [outcome(r, general_acc) for r in rs]
        n = len(rs)
        e_gen = [r.get("energy_mean") for r, c in zip(rs, cls) if c == "general"]
        e_mem = [r.get("energy_mean") for r, c in zip(rs, cls) if c == "memorized"]
        reached = [r["epochs_to_test_acc_0.99"] for r in rs if r["epochs_to_test_acc_0.99"] is not None]
        lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in setting)
                     + f" | {n} | {cls.count('general')}/{n} | {cls.count('memorized')}/{n} | {cls.count('other')}/{n} "
                     f"| {med_range(reached) if reached else '–'} | {med_range(e_gen) if e_gen else '–'} "
                     f"| {med_range(e_mem) if e_mem else '–'} | {med_range(r['final_test_acc'] for r in rs)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--groups", nargs="+", default=["Z23", "Z41"])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 1.2, 1.5],
                        help="train fraction as multiples of p*")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--weight_decay", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--general_acc", type=float, default=0.95)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--population_size", type=int, default=50)
    parser.add_argument("--out", default=None, help="JSONL file for the rows (appended; finished rows skipped)")
    args = parser.parse_args()

    points = [dict(group=g, K=args.K, epochs=args.epochs, optimizer="adam", p_star_multiplier=m, lr=lr,
                   weight_decay=args.weight_decay, seed=s)
              for g in args.groups for m in args.multipliers for lr in args.lrs for s in args.seeds]
    rows = run_points(points, args.out, args.population_size, args.eval_every)
    print(f"\nAdam, K {args.K}, wd {args.weight_decay}, {args.epochs} epochs, seeds {args.seeds}; "
          f"general = final test acc >= {args.general_acc}\n")
    print("\n".join(outcome_table(rows, ("group", "p_star_multiplier", "lr"), args.general_acc)))
    print("\nShare generalizing by lr (all groups and multipliers):")
    for lr in args.lrs:
        cls = [outcome(r, args.general_acc) for r in rows if r["point"]["lr"] == lr]
        print(f"  lr {lr:g}: {cls.count('general')}/{len(cls)} general, {cls.count('memorized')}/{len(cls)} memorized")


if __name__ == "__main__":
    main()
