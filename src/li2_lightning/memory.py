"""Memory a training run needs, checked against what the machine has before anything is allocated.

A group of order M has M² pairs; with the default 40% split and width K, the full-batch step holds
(n, M) outputs and their gradients for n ≈ 0.4 M² rows. ``Z5000`` would need hundreds of GB:
:func:`check_fits` says so at once, with a setting that fits, instead of grinding into swap.

The estimate counts, in bytes (float32 = 4, int64 = 8):

- data (CPU, built once by the data module): the table and the split's index tensors, 8 M²
  each, plus the pairs x (n, 2) and targets y (n,) of both sets, 24 M² in all;
- model: W (2M, K) and V (K, M), their gradients and the optimizer's slots (Adam: 2);
- a training step on b rows: the two gathered rows of W, XW, F = σ(XW), their gradients
  (about ``ROW_K`` (b, K) tensors), and the outputs, the loss's targets and differences, their
  gradient and the accuracy's argmax input (about ``ROW_M`` (b, M) tensors);
- a validation step on the held-out rows in one batch (measured: 0.9 times as many tensors);

times ``SAFETY`` for the allocator's slack. The constants were calibrated against the peak
resident memory of real runs (``benchmarks``-style measurement in tests/test_memory.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

ROW_K = 4  # (b, K) float tensors alive at the peak of a training step
ROW_M = 5  # (b, M) float tensors alive at the peak of a training step
VAL_FACTOR = 0.9  # a no-grad validation step keeps nearly as much (measured: the loss and accuracy inputs)
DATA_PER_PAIR = 8 + 8 + 24  # table entry, split index, x (2 int64) + y (int64): bytes per pair
SAFETY = 1.5
FLOAT = 4
#: a population (``li2 sweep``): the Trainer's and autograd's own allocations at the first step, whatever S
POPULATION_FIXED = 36_000_000
#: a population member costs about 1.25 × one run's model and step (stacked tensors, no allocator slack
#: per member); with POPULATION_FIXED the plan measured 1.40, 1.03, 1.22 × the peak for S = 4, 16, 64
#: (bench/bench_population_memory.py, Z41 K 256)
MEMBER_FACTOR = 1.25


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, by part; ``total`` includes the safety factor."""

    data: int
    model: int
    train_step: int
    val_step: int

    @property
    def total(self) -> int:
        return int(SAFETY * (self.data + self.model + max(self.train_step, self.val_step)))


def estimate_bytes(
    M: int,
    K: int,
    n_rows: int,
    n_val: int = 0,
    batch_size: Optional[int] = None,
    optimizer_slots: int = 2,
) -> MemoryEstimate:
    """Estimate the peak memory of an ``Li2Module`` training step on group order M.

    Args:
        M: group order.
        K: hidden width.
        n_rows: training pairs.
        n_val: held-out pairs (validated in one batch).
        batch_size: rows per training step; None for full batch.
        optimizer_slots: per-parameter state tensors (Adam 2, SGD with momentum 1, Muon 1-2).

    Returns:
        The estimate by part (see the module docstring).
    """
    b = n_rows if batch_size is None else min(batch_size, n_rows)
    params = 3 * M * K  # W (2M, K) and V (K, M)
    return MemoryEstimate(
        data=DATA_PER_PAIR * M * M,
        model=FLOAT * params * (2 + optimizer_slots),
        train_step=FLOAT * b * (ROW_K * K + ROW_M * M),
        val_step=int(VAL_FACTOR * FLOAT * n_val * (ROW_K * K + ROW_M * M)),
    )


def population_bytes(M: int, K: int, n_rows: int, n_val: int, S: int, optimizer_slots: int = 2) -> int:
    """Planned peak memory of a population of S members trained together (``PopulationModule``).

    ``POPULATION_FIXED + SAFETY × data + S × MEMBER_FACTOR × (model + max(train step, val step))``
    of :func:`estimate_bytes` (each member counted at the largest train size). The fixed term and
    the per-member factor were fitted so that the plan lies between the measured peak and 1.5 times it
    for S = 4, 16 and 64 (bench/bench_population_memory.py).
    """
    est = estimate_bytes(M, K, n_rows, n_val, None, optimizer_slots)
    return int(POPULATION_FIXED + SAFETY * est.data + S * member_bytes(est))


def member_bytes(est: MemoryEstimate) -> float:
    """What one more population member adds to :func:`population_bytes`."""
    return MEMBER_FACTOR * (est.model + max(est.train_step, est.val_step))


def available_bytes(device: str = "cpu") -> int:
    """Memory free for a new allocation: MemAvailable on CPU, ``mem_get_info`` on CUDA."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_fits(
    M: int,
    K: int,
    n_rows: int,
    n_val: int = 0,
    batch_size: Optional[int] = None,
    optimizer_slots: int = 2,
    available: Optional[int] = None,
    device: str = "cpu",
) -> MemoryEstimate:
    """Raise at once if a run would not fit in memory, naming a setting that would.

    Meant as one call from the module's ``setup``::

        check_fits(self.hparams.M, self.hparams.K, dm.n_train, len(dm.test_y), dm.batch_size,
                   device=str(self.device))

    Args:
        M, K, n_rows, n_val, batch_size, optimizer_slots: as for :func:`estimate_bytes`.
        available: bytes free; None to read them (:func:`available_bytes`).
        device: ``"cpu"`` or a CUDA device (the data is counted on CPU either way, so on CUDA
            only the model and the steps are compared with the device's free memory).

    Returns:
        The estimate, when it fits.

    Raises:
        ValueError: naming the estimate, what is available and the largest ``batch_size`` or K
            (or M) that fits.
    """
    est = estimate_bytes(M, K, n_rows, n_val, batch_size, optimizer_slots)
    on_cuda = device.startswith("cuda")
    free = available_bytes(device) if available is None else int(available)

    def need(e: MemoryEstimate) -> int:
        return int(SAFETY * (e.model + max(e.train_step, e.val_step))) if on_cuda else e.total

    if need(est) <= free:
        return est
    advice = _advice(M, K, n_rows, n_val, batch_size, optimizer_slots, free, need)
    raise ValueError(
        f"a run with M={M}, K={K}, {n_rows} training and {n_val} held-out pairs, "
        f"batch_size={batch_size} needs about {_gb(need(est))} on {device} (data {_gb(est.data)}, "
        f"model and optimizer {_gb(est.model)}, training step {_gb(est.train_step)}, validation "
        f"{_gb(est.val_step)}, ×{SAFETY} slack) but {_gb(free)} is available; {advice}")


def _advice(M, K, n_rows, n_val, batch_size, slots, free, need) -> str:
    def fits(**kw) -> bool:
        args = {"M": M, "K": K, "n_rows": n_rows, "n_val": n_val, "batch_size": batch_size,
                "optimizer_slots": slots, **kw}
        return need(estimate_bytes(**args)) <= free

    def largest(lo: int, hi: int, ok) -> Optional[int]:
        """The largest v in [lo, hi] with ok(v), for ok monotone decreasing; None if none."""
        if not ok(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
        return lo

    bs = largest(1, n_rows, lambda v: fits(batch_size=v))
    if bs is not None:
        return f"set data.batch_size={bs} (the largest that fits) or lower"
    k = largest(1, K, lambda v: fits(K=v))
    if k is not None:
        return f"set K={k} (the largest that fits) or lower"
    frac = n_rows / (M * M)

    def fits_order(m: int) -> bool:
        n = max(1, math.floor(frac * m * m))
        return fits(M=m, n_rows=n, n_val=round(n_val / (M * M) * m * m))

    m = largest(2, M, fits_order)
    if m is not None:
        return (f"no batch_size or K fits this group (validation evaluates all {n_val} held-out "
                f"pairs at once); use a group of order <= {m}")
    return "not even the smallest group fits: free memory first"


def check_data_fits(M: int, available: Optional[int] = None) -> int:
    """Raise at once if the data module's M² pairs would not fit in CPU memory.

    Returns:
        The bytes the pairs take (with the safety factor), when they fit.

    Raises:
        ValueError: naming the estimate, what is available and the largest order that fits.
    """
    need = int(SAFETY * DATA_PER_PAIR * M * M)
    free = available_bytes("cpu") if available is None else int(available)
    if need <= free:
        return need
    m_max = math.isqrt(int(free / (SAFETY * DATA_PER_PAIR)))
    raise ValueError(f"group of order M={M}: its M² = {M * M} pairs need about {_gb(need)} but "
                     f"{_gb(free)} is available; use a group of order <= {m_max}")
