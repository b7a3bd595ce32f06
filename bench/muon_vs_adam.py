"""Muon against Adam on the paper's Fig. 8 and Fig. 3 settings, several seeds (issue 4).

Each optimizer runs at its own learning rate (Muon's lr is its per-step singular-direction move;
at Adam's lr its W steps are tens of times smaller). Reports per run and as medians with the
spread: epochs to test accuracy 0.99, final test loss, and frequency coverage (share of the
non-trivial Fourier blocks held by a node of purity >= 0.9).

    python bench/muon_vs_adam.py --setting fig8 --seeds 1 2 3 4 5
    python bench/muon_vs_adam.py --setting fig3 --seeds 1 2 3 4 5 --out results/muon_vs_adam.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import lightning.pytorch as pl
import torch

from li2_lightning.analysis.features import coverage, irrep_power
from li2_lightning.analysis.irreps import real_blocks
from li2_lightning.callbacks.milestones import AccuracyMilestones
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module
from li2_lightning.optim import Muon

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fig8_fair import med_range  # noqa: E402  (the benches' one 'median [min, max]' format)

SETTINGS = {"fig8": {"K": 128, "epochs": 1000}, "fig3": {"K": 2048, "epochs": 300}}


def optimizer_factory(name: str, lr: float, wd: float):
    if name == "adam":
        return lambda p: torch.optim.Adam(p, lr=lr, weight_decay=wd)
    preset = name.split("-")[1]  # muon-li2, muon-keller, muon-torch
    return lambda p: Muon(p, lr=lr, preset=preset, adam_lr=1e-3, weight_decay=wd)


def run(setting: str, name: str, lr: float, seed: int, wd: float, epochs: int) -> dict:
    pl.seed_everything(seed, verbose=False)
    dm = GroupArithmeticDataModule("Z71", n_train=2016, split_seed=seed)
    model = Li2Module(K=SETTINGS[setting]["K"], optimizer=optimizer_factory(name, lr, wd))
    milestones = AccuracyMilestones(["val/acc"], [0.99])
    pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, callbacks=[milestones],
               accelerator="cpu").fit(model, dm)
    power = irrep_power(model.net.W.detach(), real_blocks(dm.group.table))
    metrics = {k: float(v) for k, v in model.trainer.callback_metrics.items()}
    return {"setting": setting, "optimizer": name, "lr": lr, "seed": seed,
            "epochs_to_0.99": milestones.milestones.get(AccuracyMilestones.key("val/acc", 0.99)),
            "test_loss": metrics["val/loss"], "test_acc": metrics["val/acc"], "coverage": coverage(power, 0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="fig8")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--runs", nargs="+", default=["adam:1e-3", "muon-li2:0.05"],
                        help="optimizer:lr pairs; optimizers: adam, muon-li2, muon-keller, muon-torch")
    parser.add_argument("--weight_decay", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    epochs = args.epochs or SETTINGS[args.setting]["epochs"]
    results: dict[str, list[dict]] = {}
    for spec in args.runs:
        name, lr = spec.split(":")
        for seed in args.seeds:
            r = run(args.setting, name, float(lr), seed, args.weight_decay, epochs)
            results.setdefault(spec, []).append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"\n{args.setting}, Z71, n 2016, K {SETTINGS[args.setting]['K']}, {epochs} epochs, wd {args.weight_decay}, "
          f"seeds {args.seeds}: median [min, max]")
    for spec, rs in results.items():
        print(f"  {spec:18s} epochs to test acc 0.99: {med_range([r['epochs_to_0.99'] for r in rs])}; "
              f"final test loss {med_range([r['test_loss'] for r in rs])}; "
              f"coverage {med_range([r['coverage'] for r in rs])}")


if __name__ == "__main__":
    main()
