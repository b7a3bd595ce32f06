"""Hook points: named activations a callback can read, with their gradient, without flags on the model.

The idea is TransformerLens' ``HookPoint``: the model passes an activation through an identity
layer, ``F = self.hook_F(self.net.hidden(x))``, and anything that wants F attaches a
:class:`Capture` to that layer for as long as it needs it. The model never knows who listens.
A capture keeps the activation of each forward pass that builds a graph (training steps; not
validation, which runs without grad) and registers a tensor hook for its gradient, so after
backward it holds F and ∂L/∂F of the step. ``Li2Module`` exposes ``hook_F``; the Li2 callbacks use
it to skip recomputing F and G_F = −∂L/∂F (docs/callbacks.md, "Your own model").
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Capture:
    """What a :class:`HookPoint` saw while this capture was attached.

    Attributes:
        calls: forward passes with grad seen (a full-batch epoch has one).
        value: the activation of the last such pass, detached.
        grad: ∂L/∂(activation) of that pass once backward has run, else None (not a copy: the
            tensor autograd passed on).
    """

    def __init__(self, point: "HookPoint") -> None:
        self._point: Optional[HookPoint] = point
        self.calls = 0
        self.value: Optional[torch.Tensor] = None
        self.grad: Optional[torch.Tensor] = None

    def _record(self, x: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return  # evaluation passes build no graph and are not what a step saw
        self.calls += 1
        self.value, self.grad = x.detach(), None
        x.register_hook(self._on_grad)

    def _on_grad(self, grad: torch.Tensor) -> None:
        self.grad = grad  # returns None: the gradient flows on unchanged

    def remove(self) -> None:
        """Detach from the hook point (idempotent); the values seen so far stay readable."""
        if self._point is not None:
            self._point._captures.pop(id(self), None)
            self._point = None

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class HookPoint(nn.Module):
    """Identity layer naming an activation; :meth:`capture` attaches a reader.

    No parameters or buffers: adding one to a model leaves its ``state_dict`` unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._captures: dict[int, Capture] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for capture in tuple(self._captures.values()):
            capture._record(x)
        return x

    def capture(self) -> Capture:
        """A new :class:`Capture`, attached until ``remove()`` (or the end of a ``with`` block)."""
        c = Capture(self)
        self._captures[id(c)] = c
        return c

    def __getstate__(self):  # a model pickled for ddp_spawn or deepcopied does not carry readers
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_captures"] = {}
        return state
