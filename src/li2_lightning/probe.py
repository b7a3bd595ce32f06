"""The probe: what the Li2 callbacks read from a LightningModule.

Any LightningModule can be watched by the Li2 callbacks if it has a method ``li2_probe()`` that
returns a :class:`Li2Probe`. ``Li2Module`` implements it; a user's own module needs a few lines
(see docs/callbacks.md).

Optionally, a module can save the callbacks a forward and backward pass by passing its hidden
activations through a hook point, ``F = self.hook_F(...)`` with ``self.hook_F =
li2_lightning.hooks.HookPoint()``: the callbacks then read F and G_F = -dL/dF of a full-batch
step there. Without one they recompute both from W and V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from li2_lightning.groups import Group


@dataclass
class Li2Probe:
    """A snapshot of a two-layer network on a group arithmetic task.

    Shapes use n training rows, group order M and hidden width K.

    Attributes:
        M: group order, also the number of classes.
        x: (n, 2) long tensor of training pairs (h1, h2) as group element indices.
        y: (n,) long tensor of targets h1·h2.
        W: (2M, K) first-layer weight; rows 0..M-1 act on h1, rows M..2M-1 on h2.
        V: (K, M) top-layer weight.
        activation: one of ``"sqr"``, ``"relu"``, ``"silu"``, ``"relusqr"``.
        loss: ``"mse"`` (the class-centred squared error of docs/theory.md §2) or ``"ce"``.
        group: the group (Cayley table), or None for Z_M with index = residue.
        eta_eff: the theory's ridge η implied by the loss and weight decay (docs/theory.md §2), or None.
        output_scale: the output multiplier β (output = β F V).
    """

    M: int
    x: torch.Tensor
    y: torch.Tensor
    W: torch.Tensor
    V: torch.Tensor
    activation: str
    loss: str = "mse"
    group: Optional["Group"] = None
    eta_eff: Optional[float] = None
    output_scale: float = 1.0


@runtime_checkable
class SupportsLi2Probe(Protocol):
    """A module the Li2 callbacks can watch."""

    def li2_probe(self) -> Li2Probe: ...
