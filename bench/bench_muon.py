"""Muon's training-step time as a ratio to Adam's on the Fig. 3 setting.

Z_71, K = 2048 (W 142×2048, V 2048×71), n = 2016 training pairs, x² activation, class-centred MSE,
one full-batch step = forward + backward + optimizer step. Variants are interleaved step by step
(each cycle runs one step of every variant, order alternating) so that load from other processes
hits them alike; the headline is the median over cycles of (Muon step time / Adam step time), with
its interquartile range. One torch thread by default (``--threads`` to change).

    python bench/bench_muon.py [--cycles 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from li2_lightning.losses import loss_sum
from li2_lightning.nets import TwoLayerNet
from li2_lightning.optim import Muon

M, K, N_TRAIN = 71, 2048, 2016

VARIANTS = {
    "adam": lambda params: torch.optim.Adam([p for _, p in params], lr=1e-3, weight_decay=2e-4),
    "muon li2": lambda params: Muon(params, lr=0.02, adam_lr=1e-3, weight_decay=2e-4, preset="li2"),
    "muon keller fp32": lambda params: Muon(params, lr=0.02, adam_lr=1e-3, weight_decay=2e-4, preset="keller"),
    "muon keller bf16": lambda params: Muon(params, lr=0.02, adam_lr=1e-3, weight_decay=2e-4, preset="keller",
                                            ns_dtype="bfloat16"),
    "muon torch (bf16)": lambda params: Muon(params, lr=0.02, adam_lr=1e-3, weight_decay=2e-4, preset="torch"),
}


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(M * M, generator=g)[:N_TRAIN]
    x = torch.stack([idx // M, idx % M], dim=1)  # (n, 2)
    return x, (x[:, 0] + x[:, 1]) % M  # Z_M: h1 + h2


def timed_step(net, opt, x, y) -> tuple[float, float]:
    """Seconds for one full step, and for its optimizer.step() alone."""
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss_sum("mse", net(x), y).div(len(y)).backward()
    t1 = time.perf_counter()
    opt.step()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=30, help="steps per variant, interleaved")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["adam"] + [v for v in args.variants if v != "adam"]

    x, y = make_batch()
    runs = {}
    for name in names:
        torch.manual_seed(0)
        net = TwoLayerNet(M, K, "sqr")
        runs[name] = (net, VARIANTS[name]([(f"net.{n}", p) for n, p in net.named_parameters()]))
        timed_step(*runs[name], x, y)  # warm-up: allocates the optimizer state
    step = {name: [] for name in names}
    opt_step = {name: [] for name in names}
    for c in range(args.cycles):
        for name in names if c % 2 == 0 else reversed(names):
            total, opt_only = timed_step(*runs[name], x, y)
            step[name].append(total)
            opt_step[name].append(opt_only)

    print(f"Fig. 3 setting: Z_{M}, W {2 * M}x{K}, V {K}x{M}, n={N_TRAIN}, x², MSE; "
          f"{args.threads} thread(s), {args.cycles} steps per variant, interleaved step by step")
    print(f"{'variant':<20} {'step / Adam step':>17} {'(IQR)':>12} {'opt.step / Adam opt.step':>26}")
    for name in names:
        lo, med, hi = quartiles([t / a for t, a in zip(step[name], step["adam"])])
        opt_ratio = statistics.median(t / a for t, a in zip(opt_step[name], opt_step["adam"]))
        print(f"{name:<20} {med:>17.2f} {f'{lo:.2f}-{hi:.2f}':>12} {opt_ratio:>26.1f}")
    print(f"(Adam: median {1e3 * statistics.median(step['adam']):.1f} ms per full step, "
          f"{1e3 * statistics.median(opt_step['adam']):.1f} ms in optimizer.step; absolute times follow "
          "the machine's load, the ratios much less)")


if __name__ == "__main__":
    main()
