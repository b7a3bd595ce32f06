"""The probe: what the Li2 callbacks read from a LightningModule.

Any LightningModule can be watched by the Li2 callbacks if it has a method ``li2_probe()`` that
returns a :class:`Li2Probe`. ``Li2Module`` implements it; a user's own module needs a few lines
(see docs/callbacks.md).

Optionally, a module can save the callbacks a forward and backward pass: when a callback sets
``pl_module.li2_capture = True`` before a training step, a module that supports capture stores the
hidden activations F and G_F = -dL/dF of that full-batch step, and returns them in the next probe.
A module without capture returns ``F=None, G_F=None`` and the callbacks recompute both.
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
        loss: ``"mse"`` (the class-centred squared error of SPEC §2) or ``"ce"``.
        group: the group (Cayley table), or None for Z_M with index = residue.
        eta_eff: the theory's ridge η implied by the loss and weight decay (SPEC §2), or None.
        output_scale: the output multiplier β (output = β F V).
        F: (n, K) hidden activations of the last captured full-batch step, or None.
        G_F: (n, K) -dL/dF of that step (L the whole-train-set loss), or None.
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
    F: Optional[torch.Tensor] = None
    G_F: Optional[torch.Tensor] = None


@runtime_checkable
class SupportsLi2Probe(Protocol):
    """A module the Li2 callbacks can watch."""

    def li2_probe(self) -> Li2Probe: ...
