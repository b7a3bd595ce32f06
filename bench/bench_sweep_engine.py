"""Bookkeeping overhead of `li2 sweep`'s Optuna engine: seconds in store calls against seconds training.

A sweep of 240 tiny points (Z5/Z7, K 8, 20 epochs, populations of 8) on a fresh SQLite store in a
temporary folder; prints the store's time (split into the one-off open of a new store, the enqueue,
ask/tell/heartbeats and the export), the training time and their ratio. Tiny points are the worst
case: with real points (hundreds to thousands of epochs) training time grows and the store time
does not. Measured on 2 shared cores: 2.8-3.1 before batching (45-60 ms a point in ask/tell), about
0.3 after (one transaction per population's ask and tell, ~2 ms a point).

    python bench/bench_sweep_engine.py [--points-per-group 120] [--epochs 20] [--population-size 8]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from li2_lightning import study as st
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
        st.open_store(st.default_store_url(path.with_suffix(".jsonl")))  # a new store: its tables, once
        opening = time.perf_counter() - t0
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
    per_point = setup + timings["store"] + export
    store = opening + per_point
    print(f"{trained} points in {trained // args.population_size} populations: "
          f"training {timings['train']:.2f} s, store {store:.2f} s (new store {opening:.2f}, open+enqueue "
          f"{setup:.2f}, ask/tell {timings['store']:.2f}, export {export:.2f}), work loop {total:.2f} s")
    print(f"store / training = {store / timings['train']:.3f} "
          f"(without the one-off creation of the store: {per_point / timings['train']:.3f}; "
          f"{1e3 * per_point / max(trained, 1):.1f} ms a point)")


if __name__ == "__main__":
    main()
