"""Training losses of SPEC §2, summed over rows (callers divide by the batch's global size)."""

from __future__ import annotations

import torch
from torch.nn import functional as nnf

LOSSES = ("mse", "ce")


def check_loss(name: str) -> None:
    """Raise ValueError unless ``name`` is an accepted loss."""
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is not supported; accepted: {list(LOSSES)}")


def centred_mse_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_i ‖(o_i − mean(o_i)) − (e_{y_i} − 1/M)‖², the author's class-centred squared error.

    Args:
        out: (n, M) outputs.
        y: (n,) class indices.
    """
    M = out.shape[1]
    resid = out - out.mean(dim=1, keepdim=True) + 1.0 / M  # (n, M)
    resid = resid - nnf.one_hot(y, M).to(out.dtype)
    return resid.square().sum()


def loss_sum(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss ``name`` summed over the rows of ``out`` (n, M) with targets ``y`` (n,)."""
    if name == "mse":
        return centred_mse_sum(out, y)
    return nnf.cross_entropy(out, y, reduction="sum")
