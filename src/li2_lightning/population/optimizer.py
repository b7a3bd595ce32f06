"""The optimizer of a population: one :class:`OptimizerSpec` on stacked (S, ...) parameters."""

from __future__ import annotations

from typing import Optional

import torch

from li2_lightning.functional import updates
from li2_lightning.population.settings import OptimizerSpec


class PopulationOptimizer(torch.optim.Optimizer):
    """The optimizer of :class:`OptimizerSpec` on stacked parameters (S, ...), per-member lr and decay.

    Calls :mod:`li2_lightning.functional.updates` with (S,) learning rates and weight decays; a
    member's update reads only its own slice, so S members behave as S separate optimizers.

    Args:
        params: the stacked parameters; with Muon two groups, ``{"params": [W], "use_muon": True}``
            and ``{"params": [V]}``.
        spec: the optimizer.
        lr, weight_decay: (S,) tensors (Adam's, AdamW's, SGD's; Muon's Adam side).
        muon_lr: (S,) Muon steps on W (default ``lr``).

    Attributes:
        active: None (every member steps), or an (S,) bool CPU tensor: members where it is False
            are frozen, parameters and state (``functional.updates``' ``active``).
        member_step: None (one step count for all, as torch's), or an (S,) float64 tensor of each
            member's Adam step count, advanced for active members at each step; a member that
            takes a slot late has its entry reset to 0 (:meth:`reset_member`).

    Raises:
        ValueError: on a negative lr, muon_lr or weight decay.
    """

    def __init__(self, params, spec: OptimizerSpec, lr: torch.Tensor, weight_decay: torch.Tensor,
                 muon_lr: Optional[torch.Tensor] = None) -> None:
        muon_lr = lr if muon_lr is None else muon_lr
        for name, v in (("lr", lr), ("weight_decay", weight_decay), ("muon_lr", muon_lr)):
            if bool((v < 0).any()):
                raise ValueError(f"{name}={v.tolist()} is not accepted; accepted: values >= 0")
        self.spec = spec
        self.active: Optional[torch.Tensor] = None
        self.member_step: Optional[torch.Tensor] = None
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, muon_lr=muon_lr, use_muon=False))

    def reset_member(self, s: int, lr: float, weight_decay: float, muon_lr: float) -> None:
        """Slot s starts a new member: its state slices zeroed (a fresh optimizer's), its step count 0,
        its own lr and weight decay."""
        for group in self.param_groups:
            for key, v in (("lr", lr), ("weight_decay", weight_decay), ("muon_lr", muon_lr)):
                group[key][s] = v
            for p in group["params"]:
                for t in self.state[p].values():
                    if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == p.shape[0]:
                        t[s].zero_()
        if self.member_step is not None:
            self.member_step[s] = 0

    def keep_members(self, keep: torch.Tensor) -> None:
        """Keep only the members ``keep`` (CPU long indices), in that order (the stacked
        parameters must be cut alike by the caller)."""
        for group in self.param_groups:
            for key in ("lr", "weight_decay", "muon_lr"):
                group[key] = group[key][keep]
            for p in group["params"]:
                state = self.state[p]
                for k, t in list(state.items()):
                    if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == p.shape[0]:
                        state[k] = t.index_select(0, keep.to(t.device))
        if self.active is not None:
            self.active = self.active[keep]
        if self.member_step is not None:
            self.member_step = self.member_step[keep]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        spec = self.spec
        preset = spec.muon_preset()
        active, step = self.active, None
        if self.member_step is not None:
            self.member_step += 1.0 if active is None else active.double()
            step = self.member_step
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                grad = p.grad
                if p.is_complex():  # as torch's optimizers do: update the (real, imaginary) pairs
                    p, grad = torch.view_as_real(p), torch.view_as_real(grad)
                if spec.name == "muon" and group["use_muon"]:
                    updates.muon_(p, grad, state, lr=group["muon_lr"], weight_decay=wd, preset=preset,
                                  ns_steps=spec.ns_steps, active=active)
                elif spec.name == "sgd":
                    updates.sgd_(p, grad, state, lr=lr, weight_decay=wd, momentum=spec.momentum or 0.0,
                                 nesterov=bool(spec.nesterov), active=active)
                else:
                    decoupled = spec.name == "adamw" or (spec.name == "muon" and preset.adam_decoupled)
                    updates.adam_(p, grad, state, lr=lr, weight_decay=wd, betas=spec.betas, eps=spec.eps,
                                  decoupled=decoupled, active=active, step=step)
        return loss
