"""Throughput of one PopulationModule of S members against S sequential Li2Module runs.

Both sides do the same work per member and epoch: one full-batch Adam step, train metrics at the
step's parameters, test metrics on the held-out pairs. The sequential side is what a user without
populations runs: S Trainer fits of Li2Module with a GroupArithmeticDataModule, one after another.
Variants are interleaved in rounds; the headline is the ratio of median times per member-epoch
(steady state, first epochs skipped) and of whole fits (with Trainer start-up).

    python bench/bench_population.py                      # Z23, K 128, S 16
    python bench/bench_population.py --group Z71 --K 512 --S 8 --epochs 20
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch

from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module
from li2_lightning.population import PopulationModule, make_members

from bench_trainer import _EpochClock  # bench/ is on sys.path when a script there runs


def _trainer(epochs: int, clock: _EpochClock) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock],
                      accelerator="cpu", devices=1)


def _steady(stamps: list[float], skip: int = 2) -> float:
    d = [b - a for a, b in zip(stamps[skip:], stamps[skip + 1:])]
    return statistics.median(d)


def population(args) -> tuple[float, float]:
    """(seconds per member-epoch steady state, seconds per member for the whole fit)."""
    t0 = time.perf_counter()
    members = make_members(list(range(args.S)), train_fraction=args.train_fraction)
    module = PopulationModule(args.group, args.K, members=members, analyze=False)
    clock = _EpochClock()
    _trainer(args.epochs, clock).fit(module)
    module.history()
    total = time.perf_counter() - t0
    return _steady(clock.stamps) / args.S, total / args.S


def sequential(args) -> tuple[float, float]:
    t0 = time.perf_counter()
    per_epoch = []
    for s in range(args.S):
        pl.seed_everything(s, verbose=False)
        dm = GroupArithmeticDataModule(args.group, train_fraction=args.train_fraction, split_seed=s)
        clock = _EpochClock()
        _trainer(args.epochs, clock).fit(Li2Module(K=args.K, M=dm.M), dm)
        per_epoch.append(_steady(clock.stamps))
    total = time.perf_counter() - t0
    return statistics.median(per_epoch), total / args.S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="Z23")
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--S", type=int, default=16)
    parser.add_argument("--train_fraction", type=float, default=0.4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    times = {"population": [], "sequential": []}
    for _ in range(args.rounds):
        times["population"].append(population(args))
        times["sequential"].append(sequential(args))
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    print(f"{args.group}, K {args.K}, p {args.train_fraction}, S {args.S}, {args.epochs} epochs, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds")
    for k, (ep, tot) in med.items():
        print(f"  {k:11s} {1000 * ep:8.3f} ms per member-epoch   {tot:6.3f} s per member (whole fit)")
    print(f"  throughput ratio population/sequential: steady {med['sequential'][0] / med['population'][0]:.1f}x, "
          f"whole fit {med['sequential'][1] / med['population'][1]:.1f}x")


if __name__ == "__main__":
    main()
