"""Per-epoch time of Li2Module under the Lightning Trainer against a plain PyTorch loop.

Same model (TwoLayerNet, gather first layer), same data, full batch, Adam with coupled decay;
every epoch both variants take one step and evaluate the whole train set (the step's own forward)
and the whole test set. Variants are interleaved in rounds; the headline is the ratio of medians.

    python bench/bench_trainer.py                     # Fig. 3 setting: Z71, K 2048, n 2016
    python bench/bench_trainer.py --group Z23 --K 512 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import lightning.pytorch as pl
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.losses import loss_sum
from li2_lightning.module import Li2Module
from li2_lightning.nets import TwoLayerNet


class _EpochClock(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())


def _diffs(stamps: list[float], skip: int) -> list[float]:
    return [b - a for a, b in zip(stamps[skip:], stamps[skip + 1 :])]


def lightning_epochs(dm, K: int, epochs: int, logger) -> list[float]:
    torch.manual_seed(0)
    clock = _EpochClock()
    trainer = pl.Trainer(max_epochs=epochs, logger=logger, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[clock], accelerator="cpu", devices=1)
    trainer.fit(Li2Module(K=K), dm)
    return _diffs(clock.stamps, skip=2)


def plain_epochs(dm, K: int, epochs: int) -> list[float]:
    torch.manual_seed(0)
    net = TwoLayerNet(dm.M, K)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=2e-4)
    xs, ys, xt, yt = dm.train_x, dm.train_y, dm.test_x, dm.test_y
    stamps = []
    for _ in range(epochs):
        stamps.append(time.perf_counter())
        out = net(xs)
        loss = loss_sum("mse", out, ys) / len(ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_acc = (out.argmax(1) == ys).float().mean()
        with torch.no_grad():
            out_t = net(xt)
            test_loss = loss_sum("mse", out_t, yt) / len(yt)
            test_acc = (out_t.argmax(1) == yt).float().mean()
        # a loop that reports its metrics reads them back every epoch, as the Trainer does
        _ = (loss.item(), train_acc.item(), test_loss.item(), test_acc.item(),
             net.W.norm().item(), net.V.norm().item())
    stamps.append(time.perf_counter())
    return _diffs(stamps, skip=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="Z71")
    parser.add_argument("--K", type=int, default=2048)
    parser.add_argument("--n_train", type=int, default=2016)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wandb", action="store_true", help="also time the Trainer with an offline W&B logger")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    dm = GroupArithmeticDataModule(args.group, n_train=args.n_train, split_seed=1)
    variants = {"plain loop": lambda: plain_epochs(dm, args.K, args.epochs),
                "Trainer (no logger)": lambda: lightning_epochs(dm, args.K, args.epochs, False)}
    if args.wandb:
        import os
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger
        variants["Trainer (W&B offline)"] = lambda: lightning_epochs(
            dm, args.K, args.epochs, WandbLogger(project="li2-bench", save_dir="runs/bench", offline=True))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name] += run()
    base = statistics.median(times["plain loop"])
    print(f"{args.group}, K {args.K}, n_train {args.n_train}, {args.threads} thread(s), "
          f"{args.rounds} rounds × {args.epochs} epochs")
    for name, ts in times.items():
        print(f"  {name:24s} median {1000 * statistics.median(ts):7.2f} ms/epoch   "
              f"ratio to plain loop {statistics.median(ts) / base:5.3f}")


if __name__ == "__main__":
    main()
