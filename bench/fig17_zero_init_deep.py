"""Zero-init V against the default init in deeper nets (Fig. 17; Fig. 9's deeper rows), on CPU.

One population per hidden-layer count: every (train fraction, V_init_scale, seed) member trains
together (``PopulationModule`` via ``train_population``), full batch, Adam, coupled weight decay,
test metrics every 5 epochs; the population stops once every member has test acc >= 0.99.
One JSON line per member is appended to ``--out``; members already there (same experiment tag,
depth, activation, fraction, init scale, seed and budget) are skipped, so a rerun resumes.

    .venv/bin/python bench/fig17_zero_init_deep.py --hidden-layers 2 3
    .venv/bin/python bench/fig17_zero_init_deep.py --experiment fig9_deep --hidden-layers 3 \\
        --fractions 0.6 --init-scales 1 --seeds 0 1 2 3 4 --epochs 2000 --layer-purity-every 20 \\
        --out results/fig9_deep_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback

from li2_lightning.analysis.irreps import fourier_blocks
from li2_lightning.analysis.layers import onset_epoch, profile_power, profile_purity
from li2_lightning.functional import model as fm
from li2_lightning.population import OptimizerSpec, PopulationModule, make_members, train_population

KEY = ("experiment", "hidden_layers", "activation", "train_fraction_asked", "V_init_scale", "seed", "epochs_budget",
       "weight_decay")


class LayerPurity(Callback):
    """Per member and hidden layer, the mean class-profile purity (docs/theory.md §10) every n epochs."""

    def __init__(self, every: int = 20):
        self.every, self.epochs, self.values = every, [], []

    def on_train_epoch_start(self, trainer, pm):
        e = trainer.current_epoch
        if e % self.every:
            return
        with torch.no_grad():
            Fs = fm.hidden_stack(pm.W, pm.tr_x, pm.hparams.activation, list(pm.U), pm.hparams.residual,
                                 rows=pm.tr_rows)
            basis = fourier_blocks(pm.M)
            row = []
            for s in range(pm.S):
                n = int(pm.tr_n[s])
                y = pm.tr_y[s, :n]
                row.append([float(profile_purity(profile_power(F[s, :n], y, basis)).mean()) for F in Fs])
        self.epochs.append(e)
        self.values.append(row)


def key_of(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY)


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    return {key_of(json.loads(line)) for line in path.read_text().splitlines() if line.strip()}


def fmt(v) -> str:
    return "never" if v is None else str(v)


def summary(rows: list[dict]) -> None:
    """Print one line per (experiment, depth, activation, wd, fraction, init): per-seed epochs and medians [min, max]."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["experiment"], r["hidden_layers"], r["activation"], r["weight_decay"], r["train_fraction_asked"],
                           r["V_init_scale"]), []).append(r)
    print(f"{'experiment':<16}{'L':>2} {'act':<5}{'wd':>7}{'frac':>5}{'V0':>5}  {'t0.5 per seed':<26}{'t0.99 per seed':<30}"
          f"{'median t0.5 [min,max]':<24}{'median t0.99 [min,max]':<24}final test acc")
    for k in sorted(groups):
        rs = sorted(groups[k], key=lambda r: r["seed"])

        def med(col):
            v = [r[col] for r in rs]
            if any(x is None for x in v):
                got = sorted(x for x in v if x is not None)
                return f"{len(got)}/{len(v)} reached" + (f" [{got[0]},{got[-1]}]" if got else "")
            return f"{statistics.median(v):g} [{min(v)},{max(v)}]"

        t5 = ", ".join(fmt(r["epochs_to_test_acc_0.5"]) for r in rs)
        t99 = ", ".join(fmt(r["epochs_to_test_acc_0.99"]) for r in rs)
        acc = ", ".join(f"{r['final_test_acc']:.3f}" for r in rs)
        print(f"{k[0]:<16}{k[1]:>2} {k[2]:<5}{k[3]:>7g}{k[4]:>5}{k[5]:>5g}  {t5:<26}{t99:<30}{med('epochs_to_test_acc_0.5'):<24}"
              f"{med('epochs_to_test_acc_0.99'):<24}{acc}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="fig17_zero_init", help="tag stored in every row (default fig17_zero_init)")
    p.add_argument("--group", default="Z41")
    p.add_argument("--K", type=int, default=256)
    p.add_argument("--hidden-layers", type=int, nargs="+", default=[2, 3], help="one population per value")
    p.add_argument("--activation", default="relu", choices=["relu", "sqr"])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--init-scales", type=float, nargs="+", default=[1.0, 0.0], help="V_init_scale values")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=1500, help="budget in full-batch steps")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--layer-purity-every", type=int, default=0,
                   help="record per-layer class-profile purity every n epochs (0: off)")
    p.add_argument("--out", type=Path, default=Path("results/fig17_zero_init_deep.jsonl"))
    p.add_argument("--summary-only", action="store_true", help="print the table of --out and exit")
    a = p.parse_args()
    if a.epochs < 1:
        raise ValueError(f"--epochs {a.epochs}: accepted: a positive number of full-batch steps")

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # subnormal Adam moments slow long CPU runs (see train_population)
    warnings.filterwarnings("ignore")
    done = done_keys(a.out)
    for L in ([] if a.summary_only else a.hidden_layers):
        grid = [(f, v, s) for f in a.fractions for v in a.init_scales for s in a.seeds
                if (a.experiment, L, a.activation, f, v, s, a.epochs, a.weight_decay) not in done]
        if not grid:
            continue
        f_, v_, s_ = zip(*grid)
        members = make_members(list(s_), train_fraction=list(f_), V_init_scale=list(v_), lr=a.lr,
                               weight_decay=a.weight_decay)
        cb = LayerPurity(a.layer_purity_every) if a.layer_purity_every > 0 else None
        t = time.time()
        pop = PopulationModule(a.group, a.K, members=members, optimizer=OptimizerSpec("adam"), eval_every=5,
                               stop_at_test_acc=0.99, check_every=50, hidden_layers=L, activation=a.activation)
        rows = train_population(pop, a.epochs, accelerator="cpu", callbacks=[cb] if cb else None)
        wall = round(time.time() - t, 1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as fh:
            for s, (r, (f, v, seed)) in enumerate(zip(rows, grid)):
                r.update(experiment=a.experiment, train_fraction_asked=f, epochs_budget=a.epochs, wall_s=wall,
                         population_size=len(grid))
                if cb is not None and cb.values:
                    n_layers = len(cb.values[0][s])
                    r["layer_purity_first"] = cb.values[0][s]
                    r["layer_purity_last"] = cb.values[-1][s]
                    r["layer_onset_epoch"] = [onset_epoch(cb.epochs, [v_[s][l] for v_ in cb.values], 0.1)
                                              for l in range(n_layers)]
                fh.write(json.dumps(r) + "\n")
        print(f"hidden_layers {L}: {len(grid)} members, {wall:.0f} s", flush=True)
    rows = [json.loads(x) for x in a.out.read_text().splitlines() if x.strip()] if a.out.exists() else []
    summary([r for r in rows if r["experiment"] == a.experiment and "train_fraction_asked" in r])


if __name__ == "__main__":
    main()
