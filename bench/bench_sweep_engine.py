"""Bookkeeping overhead of `li2 sweep`'s Optuna engine: seconds in store calls against seconds training.

A sweep of 240 tiny points (Z5/Z7, K 8, 20 epochs, populations of 8) on a fresh SQLite store in a
temporary folder; prints the two totals and their ratio. Tiny points are the worst case: with real
points (hundreds to thousands of epochs) training time grows and the store time does not.

    python bench/bench_sweep_engine.py [--points-per-group 120] [--epochs 20] [--population-size 8]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from li2_lightning.sweep import Sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-group", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--population-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump({
            "population_size": args.population_size, "accelerator": "cpu",
            "fixed": {"K": 8, "max_epochs": args.epochs, "lr": 1e-2},
            "grid": {"group": ["Z5", "Z7"], "seed": list(range(args.points_per_group))}}))
        t0 = time.perf_counter()
        sweep = Sweep(path)  # opens the store, creates the studies, enqueues every point
        setup = time.perf_counter() - t0
        timings: dict = {}
        t0 = time.perf_counter()
        trained = sweep.work(progress=False, timings=timings)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        sweep.export()
        export = time.perf_counter() - t0
    store = setup + timings["store"] + export
    print(f"{trained} points in {trained // args.population_size} populations: "
          f"training {timings['train']:.2f} s, store {store:.2f} s (create+enqueue {setup:.2f}, "
          f"ask/tell {timings['store']:.2f}, export {export:.2f}), work loop {total:.2f} s")
    print(f"store / training = {store / timings['train']:.3f}")


if __name__ == "__main__":
    main()
