"""Optimizer update rules as in-place functions of one parameter, its gradient and its state.

Each rule updates ``p`` and its ``state`` dict in place. ``lr`` and ``weight_decay`` are Python
floats, or (S,) tensors for a parameter whose leading dim indexes S members (a population): then
member s's slice moves with lr[s] and weight_decay[s] and reads nothing but its own slice, so one
call equals S separate calls. With floats the arithmetic is that of torch's single-tensor Adam,
AdamW, SGD and Muon op for op (bit-identical on CPU); with tensors it agrees up to rounding.

Two optional (S,) arguments let members of a population live their own lives (continuous
batching, docs/theory.md §7 for why members stop): ``active`` (bool) freezes the members where it
is False, their parameter slice and every state tensor unchanged (Adam with coupled decay would
otherwise move a parameter even at zero gradient), and ``step`` (Adam only) gives each member its
own step count t for the bias corrections 1 − βᵗ, so a member that took a slot late starts at t = 1.
Without them the code path is the one above, bit for bit.

Muon (docs/theory.md §8) is split in three steps so that ``optim.Muon`` can shard the middle one
over ranks: :func:`muon_direction_` (momentum), :func:`muon_orthogonalize` (Newton-Schulz) and
:func:`muon_apply_` (decay and step); :func:`muon_` runs all three. :data:`MUON_PRESETS` holds the
settings of each preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

from li2_lightning.optim.newton_schulz import KELLER_QUINTIC, LI2_COEFFICIENTS, Triple, newton_schulz

Scalar = Union[float, Tensor]
NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class MuonPreset:
    """The settings that tell Muon presets apart (see ``optim.Muon``'s table).

    Attributes:
        momentum: EMA factor β of the buffer m ← βm + (1 − β)g.
        nesterov: orthogonalize (1 − β)g + βm instead of m.
        coefficients: Newton-Schulz (a, b, c) per step.
        ns_dtype: ``"float32"`` or ``"bfloat16"``.
        arithmetic: Newton-Schulz rounding, ``"keller"`` or ``"torch"`` (see ``newton_schulz``).
        shape_scaling: multiply the step by √max(1, rows/cols).
        adam_decoupled: the other parameters' Adam uses decoupled decay (AdamW).
    """

    momentum: float
    nesterov: bool
    coefficients: tuple[Triple, ...]
    ns_dtype: str
    arithmetic: str
    shape_scaling: bool
    adam_decoupled: bool
    ns_eps: float = 1e-7


MUON_PRESETS: dict[str, MuonPreset] = {
    "li2": MuonPreset(0.99, False, LI2_COEFFICIENTS, "float32", "keller", False, False),
    "keller": MuonPreset(0.95, True, (KELLER_QUINTIC,) * 99, "float32", "keller", True, True),
    # torch.optim.Muon: bfloat16 Newton-Schulz, max(‖G‖, eps), "original" lr adjustment, AdamW beside
    "torch": MuonPreset(0.95, True, (KELLER_QUINTIC,) * 99, "bfloat16", "torch", True, True),
}


def _member(v: Scalar, p: Tensor) -> Scalar:
    """A float stays a float; an (S,) tensor becomes float64 (S, 1, ..., 1) on p's device."""
    if isinstance(v, Tensor):
        return v.to(device=p.device, dtype=torch.float64).view(-1, *([1] * (p.dim() - 1)))
    return float(v)


def _cast(c: Scalar, p: Tensor) -> Scalar:
    """A coefficient computed in double precision, rounded to p's dtype as torch rounds a scalar."""
    return c.to(p.dtype) if isinstance(c, Tensor) else c


def _is_zero(c: Scalar) -> bool:
    return (not isinstance(c, Tensor)) and c == 0


def _add(a: Tensor, b: Tensor, c: Scalar, out_of_place: bool = False) -> Tensor:
    """a + c·b (in place unless ``out_of_place``): ``add(alpha=c)`` for a float, ``addcmul`` per member."""
    if isinstance(c, Tensor):
        return torch.addcmul(a, b, c) if out_of_place else a.addcmul_(b, c)
    return a.add(b, alpha=c) if out_of_place else a.add_(b, alpha=c)


class _Frozen:
    """Restores the slices of inactive members of ``p`` and of every member-stacked state tensor.

    The update itself runs batched over all S members; afterwards the rows where ``active`` is
    False are written back (state created by the update, e.g. a first momentum buffer, is zeroed
    there: a member that never stepped has a fresh state). ``active`` may live on the CPU: only
    the indices of frozen members travel to the device.
    """

    def __init__(self, p: Tensor, state: dict[str, Any], active: Optional[Tensor]) -> None:
        self.idx = None
        if active is None:
            return
        active = active.to(torch.bool)
        if active.shape != p.shape[:1]:
            raise ValueError(f"active has shape {tuple(active.shape)}; expected ({p.shape[0]},), one flag per member")
        if bool(active.all()):
            return
        self.idx = (~active).nonzero().flatten().to(p.device)
        self.p, self.state = p, state
        self.saved = {k: v.index_select(0, self.idx) for k, v in self._stacked(state).items()}
        self.p_saved = p.index_select(0, self.idx)

    def _stacked(self, state: dict[str, Any]) -> dict[str, Tensor]:
        return {k: v for k, v in state.items() if isinstance(v, Tensor) and v.shape[:1] == self.p.shape[:1]
                and v.dim() == self.p.dim()}

    def restore(self) -> None:
        if self.idx is None:
            return
        self.p.index_copy_(0, self.idx, self.p_saved)
        for k, v in self._stacked(self.state).items():
            if k in self.saved:
                v.index_copy_(0, self.idx, self.saved[k])
            else:
                v.index_fill_(0, self.idx, 0)


def adam_(p: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Scalar, weight_decay: Scalar = 0.0,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, decoupled: bool = False,
          active: Optional[Tensor] = None, step: Optional[Tensor] = None) -> None:
    """One Adam (coupled L2: g ← g + wd·p) or AdamW (decoupled: p ← p(1 − lr·wd)) step.

    ``state`` holds ``step`` (a float tensor), ``exp_avg`` and ``exp_avg_sq`` as torch.optim.Adam's.
    ``active`` (S,) bool: members left unchanged where False. ``step`` (S,): each member's step
    number t of this update (1 for its first), used in the bias corrections instead of
    ``state["step"]``; the caller counts it (only active members advance).
    """
    frozen = _Frozen(p, state, active)
    _adam(p, grad, state, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, decoupled=decoupled,
          member_step=step)
    frozen.restore()


def _adam(p: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Scalar, weight_decay: Scalar,
          betas: tuple[float, float], eps: float, decoupled: bool, member_step: Optional[Tensor]) -> None:
    beta1, beta2 = betas
    if not state:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] += 1
    step: Scalar = state["step"].item() if member_step is None else _member(member_step, p)
    lr, wd = _member(lr, p), _member(weight_decay, p)
    if not _is_zero(wd):
        if decoupled:
            p.mul_(_cast(1 - lr * wd, p))
        else:
            grad = _add(grad, p, _cast(wd, p), out_of_place=True)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / _cast((1 - beta2**step) ** 0.5, p)).add_(eps)
    step_size = _cast(-lr / (1 - beta1**step), p)
    if isinstance(step_size, Tensor):
        p.add_((step_size * exp_avg).div_(denom))  # addcdiv's c·a/b, per member
    else:
        p.addcdiv_(exp_avg, denom, value=step_size)


def sgd_(p: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Scalar, weight_decay: Scalar = 0.0,
         momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
         active: Optional[Tensor] = None) -> None:
    """One SGD step with coupled L2 decay and optional (Nesterov) momentum, as torch.optim.SGD.

    ``active`` (S,) bool: members left unchanged where False (see :func:`adam_`).
    """
    frozen = _Frozen(p, state, active)
    _sgd(p, grad, state, lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
         nesterov=nesterov)
    frozen.restore()


def _sgd(p: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Scalar, weight_decay: Scalar,
         momentum: float, dampening: float, nesterov: bool) -> None:
    lr, wd = _member(lr, p), _member(weight_decay, p)
    if not _is_zero(wd):
        grad = _add(grad, p, _cast(wd, p), out_of_place=True)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.clone(grad).detach()
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(buf, alpha=momentum) if nesterov else buf
    _add(p, grad, _cast(-lr, p))


def muon_direction_(grad: Tensor, state: dict[str, Any], *, momentum: float, nesterov: bool) -> Tensor:
    """Update the momentum m ← βm + (1 − β)g in ``state``; return Newton-Schulz's input."""
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    buf.lerp_(grad, 1 - momentum)
    return grad.lerp(buf, momentum) if nesterov else buf


def muon_orthogonalize(G: Tensor, preset: MuonPreset, ns_steps: int = 5,
                       ns_dtype: Optional[str] = None) -> Tensor:
    """Newton-Schulz of G (..., m, n) with the preset's schedule, precision and normalization."""
    return newton_schulz(G, preset.coefficients, ns_steps, dtype=NS_DTYPES[ns_dtype or preset.ns_dtype],
                         eps=preset.ns_eps, arithmetic=preset.arithmetic)


def muon_apply_(p: Tensor, O: Tensor, *, lr: Scalar, weight_decay: Scalar, shape_scaling: bool) -> None:
    """p ← p(1 − lr·wd) − lr·s·O with s = √max(1, rows/cols) when ``shape_scaling``, else 1."""
    lr, wd = _member(lr, p), _member(weight_decay, p)
    scale = math.sqrt(max(1.0, p.size(-2) / p.size(-1))) if shape_scaling else 1.0
    p.mul_(_cast(1 - lr * wd, p))  # decoupled decay, before the update
    _add(p, O, _cast(-lr * scale, p))


def muon_(p: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Scalar, weight_decay: Scalar = 0.0,
          preset: Union[str, MuonPreset] = "li2", momentum: Optional[float] = None,
          nesterov: Optional[bool] = None, ns_steps: int = 5, ns_dtype: Optional[str] = None,
          active: Optional[Tensor] = None) -> None:
    """One Muon step on a matrix p (..., m, n) (every leading index its own matrix).

    ``momentum``, ``nesterov`` and ``ns_dtype`` default to the preset's. ``active`` (S,) bool:
    members left unchanged where False (see :func:`adam_`).
    """
    frozen = _Frozen(p, state, active)
    pre = MUON_PRESETS[preset] if isinstance(preset, str) else preset
    G = muon_direction_(grad, state, momentum=pre.momentum if momentum is None else momentum,
                        nesterov=pre.nesterov if nesterov is None else nesterov)
    O = muon_orthogonalize(G, pre, ns_steps, ns_dtype)
    muon_apply_(p, O, lr=lr, weight_decay=weight_decay, shape_scaling=pre.shape_scaling)
    frozen.restore()
