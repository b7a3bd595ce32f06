"""The paper's two-layer network: Ŷ = β σ(XW) V, no biases (docs/theory.md §1).

The math lives in :mod:`li2_lightning.functional.model`; this module holds the parameters.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from li2_lightning.functional import model as fm
from li2_lightning.functional.model import check_M_K

__all__ = ["ACTIVATIONS", "TwoLayerNet", "activation_fn", "check_M_K"]

#: σ by name (the functional registry's, without derivatives).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {k: a.sigma for k, a in fm.ACTIVATIONS.items()}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise activation σ called ``name``.

    Raises:
        ValueError: if ``name`` is not one of ``ACTIVATIONS``.
    """
    return fm.check_activation(name).sigma


class TwoLayerNet(nn.Module):
    """Two-layer network on pairs of group elements.

    The input X (n × 2M) is the one-hot of h1 next to the one-hot of h2, so XW is two row gathers
    of W added (docs/theory.md §1); :meth:`hidden` takes the index pairs directly and never builds X.

    Args:
        M: group order (input is 2M wide, output M wide).
        K: hidden width.
        activation: ``"sqr"`` (x², default), ``"relu"``, ``"silu"`` or ``"relusqr"``.
        V_init_scale: multiplier on V's initial values; 0 gives the paper's zero-init V.
        output_scale: the output multiplier β in Ŷ = β F V.

    Parameters ``W`` (2M × K, column j is node j) and ``V`` (K × M) are initialised as
    ``nn.Linear`` would: uniform in ±1/√fan_in, drawn from the global RNG, W first.
    """

    def __init__(
        self,
        M: int,
        K: int,
        activation: str = "sqr",
        V_init_scale: float = 1.0,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_M_K(M, K)
        self.sigma = activation_fn(activation)
        self.M, self.K, self.activation = M, K, activation
        self.output_scale = float(output_scale)
        self.W = nn.Parameter(torch.empty(2 * M, K))
        self.V = nn.Parameter(torch.empty(K, M))
        with torch.no_grad():
            bound_W, bound_V = 1 / math.sqrt(2 * M), 1 / math.sqrt(K)
            self.W.uniform_(-bound_W, bound_W)
            self.V.uniform_(-bound_V, bound_V).mul_(V_init_scale)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """XW for index pairs x (n, 2) -> (n, K), as W[h1] + W[M + h2]."""
        return fm.preactivation(self.W, x)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """F = σ(XW) for index pairs x (n, 2) -> (n, K)."""
        return self.sigma(fm.preactivation(self.W, x))

    def readout(self, F: torch.Tensor) -> torch.Tensor:
        """Ŷ = β F V for hidden activations F (n, K) -> (n, M)."""
        return fm.readout(F, self.V, self.output_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, M) for index pairs x (n, 2)."""
        return self.readout(self.hidden(x))
