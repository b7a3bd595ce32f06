"""Training losses (docs/theory.md §2), summed over rows (callers divide by the batch's global size).

Re-exported from :mod:`li2_lightning.functional.model`, where the per-row losses live.
"""

from __future__ import annotations

import torch

from li2_lightning.functional.model import LOSSES, check_loss, loss_rows, loss_sum

__all__ = ["LOSSES", "centred_mse_sum", "check_loss", "loss_rows", "loss_sum"]


def centred_mse_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_i ‖(o_i − mean(o_i)) − (e_{y_i} − 1/M)‖², the author's class-centred squared error.

    Args:
        out: (n, M) outputs.
        y: (n,) class indices.
    """
    return loss_sum("mse", out, y)
