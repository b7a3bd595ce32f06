"""What a population's members have of their own, and the optimizer they all run.

:class:`MemberSettings` (one per member, :func:`make_members` builds them from seeds and
per-member lists) and :class:`OptimizerSpec` (the optimizer every member runs, as ``Li2Module``
would be given it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from li2_lightning.functional import updates

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")


@dataclass(frozen=True)
class MemberSettings:
    """What one member of a population has of its own.

    Args:
        seed: init seed (the member is ``TwoLayerNet`` drawn after ``torch.manual_seed(seed)``, as
            ``Li2Module`` under ``seed_everything(seed)``).
        split_seed: train/test split seed (default: ``seed``).
        train_fraction, n_train, p_star_multiplier: the train size, at most one of them (default:
            train fraction 0.4).
        lr: the learning rate of Adam, AdamW or SGD; under Muon, that of the Adam on V
            (``Muon``'s ``adam_lr``).
        weight_decay: the optimizer's weight decay (under Muon: W's decoupled decay and V's Adam's).
        muon_lr: Muon's step on W (``Muon``'s ``lr``; default ``lr``); only with Muon.
        V_init_scale: multiplier on V's initial values (0: zero-init V).
        max_epochs: the member's own budget of full-batch steps (default: the population's, see
            :meth:`PopulationModule.configure_members`, else the Trainer's max_epochs).
    """

    seed: int = 0
    split_seed: Optional[int] = None
    train_fraction: Optional[float] = None
    n_train: Optional[int] = None
    p_star_multiplier: Optional[float] = None
    lr: float = 1e-3
    weight_decay: float = 2e-4
    muon_lr: Optional[float] = None
    V_init_scale: float = 1.0
    max_epochs: Optional[int] = None


def make_members(seeds: Sequence[int], **per_member: Any) -> list[MemberSettings]:
    """One :class:`MemberSettings` per seed; each other setting a single value or one per seed.

    Raises:
        ValueError: on an empty ``seeds``, an unknown setting, or a list whose length is not len(seeds).
    """
    S = len(seeds)
    if S == 0:
        raise ValueError("seeds=[] gives an empty population; accepted: one init seed per member")
    known = {f.name for f in dataclasses.fields(MemberSettings)} - {"seed"}
    unknown = set(per_member) - known
    if unknown:
        raise ValueError(f"member settings {sorted(unknown)} are not known; accepted: {sorted(known)}")
    columns = {}
    for name, value in per_member.items():
        if isinstance(value, (list, tuple)):
            if len(value) != S:
                raise ValueError(f"{name} has {len(value)} entries but there are {S} members (len(seeds)); "
                                 "give one value per member or a single value for all")
            columns[name] = list(value)
        elif value is not None:
            columns[name] = [value] * S
    return [MemberSettings(seed=int(seed), **{k: v[s] for k, v in columns.items()}) for s, seed in enumerate(seeds)]


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer every member runs, as ``Li2Module`` would be given it.

    ``adam``, ``adamw`` and ``sgd`` are ``torch.optim.Adam`` / ``AdamW`` / ``SGD`` with the member's
    lr and weight decay; ``muon`` is ``li2_lightning.optim.Muon(lr=muon_lr, adam_lr=lr,
    weight_decay=weight_decay, preset=preset, ...)``.

    Args:
        name: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"muon"``.
        preset: Muon's preset, ``"li2"``, ``"keller"`` or ``"torch"``.
        betas, eps: Adam's (also Muon's Adam side).
        momentum: SGD's momentum (default 0), or Muon's EMA factor (default: the preset's).
        nesterov: SGD's Nesterov flag (default False), or Muon's (default: the preset's).
        ns_steps, ns_dtype: Muon's Newton-Schulz steps and precision (default: the preset's).
        adam_decoupled: Muon's Adam side uses decoupled decay (default: the preset's).

    Raises:
        ValueError: on an unknown name or preset, or a setting ``Muon`` would refuse.
    """

    name: str = "adam"
    preset: str = "li2"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: Optional[float] = None
    nesterov: Optional[bool] = None
    ns_steps: int = 5
    ns_dtype: Optional[str] = None
    adam_decoupled: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.name!r} is not supported; accepted: {list(OPTIMIZERS)}")
        if self.preset not in updates.MUON_PRESETS:
            raise ValueError(f"preset={self.preset!r} is not a Muon preset; accepted: {list(updates.MUON_PRESETS)}")
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum={self.momentum!r} is out of range; accepted: [0, 1)")
        if self.name == "sgd" and self.nesterov and not self.momentum:
            raise ValueError("nesterov=True with optimizer='sgd' needs a momentum > 0 (as torch.optim.SGD)")
        if self.name == "muon":  # Muon's own checks, on a stand-in matrix
            from li2_lightning.optim import Muon

            Muon([("W", torch.zeros(2, 2))], preset=self.preset, momentum=self.momentum, nesterov=self.nesterov,
                 ns_steps=self.ns_steps, ns_dtype=self.ns_dtype, adam_betas=self.betas, adam_eps=self.eps)

    def muon_preset(self) -> updates.MuonPreset:
        """The Muon preset with this spec's overrides."""
        base = updates.MUON_PRESETS[self.preset]
        return dataclasses.replace(
            base, momentum=base.momentum if self.momentum is None else self.momentum,
            nesterov=base.nesterov if self.nesterov is None else self.nesterov,
            ns_dtype=base.ns_dtype if self.ns_dtype is None else self.ns_dtype,
            adam_decoupled=base.adam_decoupled if self.adam_decoupled is None else self.adam_decoupled)
