"""Population training: S independent nets trained as one batched computation.

A sweep point of the Li2 experiments is tiny (one Z_M table, one 2M×K and one K×M matrix); one of
them cannot keep a machine busy. :class:`PopulationModule` stacks S members of the same shape,
W (S, 2M, K) and V (S, K, M), and trains them in one forward and backward per step:

- every member has its own :class:`MemberSettings` (init seed, split seed, train size, learning
  rate, weight decay, Muon step, V init scale); its train and test rows are index lists into the M² table (padded to the largest
  member, with a 0/1 weight), so each step yields every member's train metrics (at the parameters
  the step saw) and test metrics from the same batched forward;
- the loss is the sum of the members' losses, so member s's gradient is exactly the gradient of its
  own loss; :class:`PopulationOptimizer` applies the :class:`OptimizerSpec` (Adam, AdamW, SGD, or
  Muon on W with any preset and Adam or AdamW on V, exactly as ``Li2Module`` would be given it)
  through :mod:`li2_lightning.functional.updates` with (S,) hyperparameters, so members never
  interact. The forward and losses are :mod:`li2_lightning.functional.model`'s with a member dim.

Member s is initialised exactly as ``Li2Module`` is under ``seed_everything(seed_s)`` (the global
RNG seeded, then ``TwoLayerNet`` drawn, W first), and its metrics follow ``Li2Module``'s timing:
``train/acc`` at epoch e is measured at θ_e (before step e), ``val/acc`` at θ_{e+1}.
``tests/test_population.py`` checks members against separate ``Li2Module`` runs for every optimizer.

Per-member results (:meth:`PopulationModule.results`) count *steps*: ``epochs_to_test_acc_0.5 = t``
means the parameters after t full-batch steps were the first with test accuracy ≥ 0.5.

Members may also live their own lives (:meth:`PopulationModule.configure_members`): each has its
own budget, its stages are tracked by the rule of docs/theory.md §7 from batched observables, a
:class:`~li2_lightning.population_policy.StopPolicy` stops those that are done or stalled, and a
stopped member's slot is frozen (the optimizer's ``active`` mask) or taken by the next pending
member, with a fresh init, split, optimizer state and step count (continuous batching).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from li2_lightning.analysis import features
from li2_lightning.data import P_STAR_C, resolve_n_train, split_pairs
from li2_lightning.functional import model as fm
from li2_lightning.functional import updates
from li2_lightning.groups import make_group
from li2_lightning.nets import TwoLayerNet, check_variant

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
THRESHOLDS = (("train_acc", 1.0), ("test_acc", 0.5), ("test_acc", 0.99))
_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


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


class _OneStep(Dataset):
    """One dummy batch per epoch: the data lives in the module as index buffers."""

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(1)

    def __len__(self) -> int:
        return 1


class PopulationModule(pl.LightningModule):
    """S independent Li2 two-layer nets on one group, trained as one batched computation.

    Train with ``Trainer(max_epochs=...).fit(module)``: the module serves its own
    one-batch-per-epoch loader (full batch, the paper's epoch).

    Args:
        group: group spec for :func:`~li2_lightning.groups.make_group`.
        K: hidden width.
        members: one :class:`MemberSettings` (or a dict of its fields) per member; S = len(members).
            :func:`make_members` builds them from seeds and per-member lists.
        optimizer: the :class:`OptimizerSpec` (or a dict of its fields) every member runs.
        activation, loss, output_scale: as for ``Li2Module``.
        hidden_layers, residual, complex_weights, top_layer, ridge_lambda: the model variant, as for
            ``Li2Module`` (docs/theory.md §10), shared by every member. With ``top_layer="ridge"``
            each member's V is its own ridge solution on its own training rows before every step.
        p_star_c: c in p* = c ln M / M (for ``p_star_multiplier``).
        stop_at_test_acc: stop training once every member's test accuracy is at least this
            (checked every ``check_every`` epochs); None trains for the Trainer's max_epochs.
        check_every: epochs between stop checks (each costs one device sync).
        eval_every: measure test metrics at θ_t only when t is a multiple of this (and at the
            end); 1 gives every epoch. With a small train fraction the test rows dominate the
            cost, so sweeps that need only final accuracies and epochs-to-grok at a coarser
            resolution set 5-20. Unmeasured entries of :meth:`history` are NaN.
        log_every_n_epochs: epochs between logging the population means (0: never).
        analyze: compute per-member energy and irrep coverage in :meth:`results`.
        policy, source, sink, tokens, member_max_epochs: per-member stages, stopping and refill
            (:meth:`configure_members`); all None: every member trains the Trainer's max_epochs.

    Raises:
        ValueError: on no members, ``muon_lr`` without Muon, Muon with complex weights, or any
            setting ``Li2Module`` / ``GroupArithmeticDataModule`` would refuse.
    """

    def __init__(
        self,
        group: str = "Z23",
        K: int = 512,
        members: Sequence[Union[MemberSettings, dict]] = (MemberSettings(),),
        optimizer: Union[OptimizerSpec, dict] = OptimizerSpec(),
        activation: str = "sqr",
        loss: str = "mse",
        output_scale: float = 1.0,
        hidden_layers: int = 1,
        residual: bool = False,
        complex_weights: bool = False,
        top_layer: str = "learned",
        ridge_lambda: float = 1e-3,
        p_star_c: float = P_STAR_C,
        stop_at_test_acc: Optional[float] = None,
        check_every: int = 50,
        eval_every: int = 1,
        log_every_n_epochs: int = 0,
        analyze: bool = True,
        policy: Optional[Any] = None,
        source: Optional[Callable[[], Optional[tuple[MemberSettings, Any]]]] = None,
        sink: Optional[Callable[[dict, Any], None]] = None,
        tokens: Optional[Sequence[Any]] = None,
        member_max_epochs: Optional[int] = None,
    ) -> None:
        super().__init__()
        members = [m if isinstance(m, MemberSettings) else MemberSettings(**m) for m in members]
        spec = optimizer if isinstance(optimizer, OptimizerSpec) else OptimizerSpec(**optimizer)
        if not members:
            raise ValueError("members=[] gives an empty population; accepted: one MemberSettings per member")
        self.save_hyperparameters({"group": group, "K": K, "members": [dataclasses.asdict(m) for m in members],
                                   "optimizer": dataclasses.asdict(spec), "activation": activation, "loss": loss,
                                   "output_scale": output_scale, "hidden_layers": hidden_layers,
                                   "residual": residual, "complex_weights": complex_weights,
                                   "top_layer": top_layer, "ridge_lambda": ridge_lambda, "p_star_c": p_star_c,
                                   "stop_at_test_acc": stop_at_test_acc, "check_every": check_every,
                                   "eval_every": eval_every, "log_every_n_epochs": log_every_n_epochs,
                                   "analyze": analyze})
        fm.check_activation(activation)
        fm.check_loss(loss)
        check_variant(activation, hidden_layers, complex_weights, top_layer, ridge_lambda, loss)
        if complex_weights and spec.name == "muon":
            raise ValueError("complex_weights=True with optimizer='muon': Muon's Newton-Schulz step is defined for "
                             "real matrices; accepted: 'adam', 'adamw' or 'sgd'")
        for name, value in (("check_every", check_every), ("eval_every", eval_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not accepted; accepted: an integer >= 1")
        if spec.name != "muon" and any(m.muon_lr is not None for m in members):
            raise ValueError(f"muon_lr is set but optimizer={spec.name!r}; it applies to 'muon' only")
        for name in ("lr", "weight_decay", "muon_lr"):
            vals = [getattr(m, name) for m in members]
            if any(v is not None and v < 0 for v in vals):
                raise ValueError(f"{name}={vals} is not accepted; accepted: values >= 0")
        self.grp = make_group(group)
        M = self.M = self.grp.order
        fm.check_M_K(M, K)
        S = self.S = len(members)
        self.K, self.members, self.spec = K, members, spec
        self.split_seeds = [m.seed if m.split_seed is None else int(m.split_seed) for m in members]
        self.n_trains = [resolve_n_train(M, m.train_fraction, m.n_train, m.p_star_multiplier, p_star_c)
                         for m in members]

        # member s drawn exactly as Li2Module under seed_everything(seed_s); the global RNG is kept
        nets = []
        with torch.random.fork_rng(devices=[]):
            for m in members:
                torch.manual_seed(m.seed)
                nets.append(TwoLayerNet(M, K, activation, m.V_init_scale, output_scale, hidden_layers, residual,
                                        complex_weights, top_layer, ridge_lambda))
        self.W = torch.nn.Parameter(torch.stack([net.W.detach() for net in nets]))  # (S, 2M, K)
        self.V = torch.nn.Parameter(torch.stack([net.V.detach() for net in nets]),  # (S, K, M)
                                    requires_grad=top_layer == "learned")
        self.U = torch.nn.ParameterList(  # layers 2..L, each (S, K, K)
            [torch.nn.Parameter(torch.stack([net.U[l].detach() for net in nets])) for l in range(hidden_layers - 1)])

        tr, te = zip(*(split_pairs(M, self.n_trains[s], self.split_seeds[s]) for s in range(S)))
        self._row_lists = {"tr": list(tr), "te": list(te)}
        self._register_rows("tr", tr)
        self._register_rows("te", te)
        # metrics at θ_0..θ_T, (T+1, S, 4), preallocated on the device at fit start: appending a
        # small tensor per step grew the process by ~0.25 MB an epoch (allocator fragmentation)
        self._hist: Optional[torch.Tensor] = None
        self._steps = 0  # rows of _hist filled by training steps
        self._final: Optional[torch.Tensor] = None
        self._stopped_early = False
        self._dynamic = False
        if any(v is not None for v in (policy, source, sink, tokens, member_max_epochs)) or any(
                m.max_epochs is not None for m in members):
            self.configure_members(policy, source, sink, tokens, member_max_epochs)

    # ---------------------------------------------------------------- members with their own lives

    def configure_members(self, policy: Optional[Any] = None,
                          source: Optional[Callable[[], Optional[tuple[MemberSettings, Any]]]] = None,
                          sink: Optional[Callable[[dict, Any], None]] = None, tokens: Optional[Sequence[Any]] = None,
                          max_epochs: Optional[int] = None, compact: bool = True) -> None:
        """Give every member its own life: stages, a stop, and a successor in its slot (before fit).

        Args:
            policy: a :class:`~li2_lightning.population_policy.StopPolicy` (or its dict, or a mode
                string): every ``check_every`` epochs of its own count each member's observables
                are computed in one batched pass and the stage rule (docs/theory.md §7) advanced;
                members stop when the policy says so. None: no stages; members stop at their budget.
            source: called when a member stops; returns the next ``(MemberSettings, token)`` for
                the freed slot (same group, width, optimizer and model as the population), or None
                when nothing is pending. A newcomer starts exactly as a ``Li2Module`` under
                ``seed_everything(seed)`` would: fresh init, its own split, optimizer state and
                step count, lr and weight decay, and its own budget.
            sink: called as ``sink(row, token)`` as soon as a member finishes (its
                :meth:`results` row, with its per-epoch ``curves``).
            tokens: one token per initial member (default: its index).
            max_epochs: a member's budget when its settings give none (default: the Trainer's).
            compact: drop frozen slots from the batch once nothing is pending (False keeps them,
                frozen, e.g. to inspect them).

        Once no member is active and nothing is pending, training stops. A slot whose member
        stopped while the source is empty is frozen (parameters and optimizer state unchanged)
        and dropped from the batch at the next epoch.
        """
        from li2_lightning.population_policy import StopPolicy

        if self.hparams.complex_weights and policy is not None:
            raise ValueError("policy with complex_weights=True: the stage observables (a_G, purity) are defined for "
                             "real weights; accepted: policy=None (budget stops and refill only)")
        if tokens is not None and len(tokens) != self.S:
            raise ValueError(f"tokens has {len(tokens)} entries but there are {self.S} members; give one per member")
        self._dynamic = True
        self._compact_frozen = compact
        self.policy = None if policy is None else StopPolicy.from_dict(policy)
        self.source, self.sink = source, sink
        self._default_budget = max_epochs
        self._tokens = list(range(self.S)) if tokens is None else list(tokens)
        self._serial = list(range(self.S))  # arrival order of the member in each slot
        self._arrived = self.S
        self._start = [0] * self.S  # row of _hist holding the slot's member's θ_0
        self._tracks = [self._new_track() for _ in range(self.S)]
        self._active = torch.ones(self.S, dtype=torch.bool)
        self._pending: dict[int, dict] = {}  # slot -> observables at θ_t, waiting for test acc at θ_{t+1}
        self._records: list[dict] = []
        self._member_epochs = 0  # sum over steps of the active members: the compute spent

    def _new_track(self):
        from li2_lightning.population_policy import MemberTrack

        return MemberTrack() if self.policy is not None else None

    def _budget(self, s: int) -> int:
        m = self.members[s]
        if m.max_epochs is not None:
            return int(m.max_epochs)
        if self._default_budget is not None:
            return int(self._default_budget)
        return int(self.trainer.max_epochs) if self._trainer is not None and self.trainer.max_epochs else 1 << 62

    def _due(self, s: int, age: int) -> bool:
        c = self.policy.check_every
        return age % c == 0 or age == self._budget(s) - 1

    def _due_slots(self) -> list[int]:
        return [s for s in range(self.S) if bool(self._active[s]) and self._due(s, self._steps - self._start[s])]

    def _basis(self):
        if getattr(self, "_basis_cache", None) is None:
            from li2_lightning.analysis.irreps import fourier_blocks, is_cyclic_table, real_blocks

            table = self.grp.table
            self._basis_cache = fourier_blocks(self.M) if is_cyclic_table(table) else real_blocks(table)
        return self._basis_cache

    def _observe_pre_step(self, due: list[int], F: torch.Tensor, tr_acc: torch.Tensor) -> None:
        """Observables at θ_t of the members due (one batched pass); the rule waits for test acc at θ_{t+1}."""
        from li2_lightning.population_policy import member_observables

        idx = torch.tensor(due, device=self.W.device)
        pol, hp = self.policy, self.hparams
        obs = member_observables(self.W.detach().index_select(0, idx), self.V.detach().index_select(0, idx),
                                 F.index_select(0, idx), self.tr_y.index_select(0, idx),
                                 self.tr_mask.index_select(0, idx), self.M, self._basis(), hp.loss,
                                 hp.output_scale, pol.purity_threshold, pol.independence_nodes)
        cols = {k: v.double().cpu().tolist() for k, v in {**obs, "train_acc": tr_acc.index_select(0, idx)}.items()}
        for j, s in enumerate(due):
            self._pending[s] = {"epoch": self._steps - self._start[s], **{k: v[j] for k, v in cols.items()}}

    def _slot_logits(self, prefix: str, idx: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return fm.forward(self.W.index_select(0, idx), self.V.index_select(0, idx),
                          getattr(self, f"{prefix}_x").index_select(0, idx), hp.activation, hp.output_scale,
                          U=[u.index_select(0, idx) for u in self.U], residual=hp.residual)

    @torch.no_grad()
    def _measure_slots(self, slots: list[int]) -> torch.Tensor:
        """(len(slots), 4) train loss, train acc, test loss, test acc of those members now, CPU."""
        idx = torch.tensor(slots, device=self.W.device)
        tr = self._member_metrics(self._slot_logits("tr", idx), "tr", idx)
        te = self._member_metrics(self._slot_logits("te", idx), "te", idx)
        return torch.stack([*tr, *te], 1).float().cpu()

    @torch.no_grad()
    def _members_epoch_end(self) -> None:
        """After the step: finish the rule's pending checks, stop members, refill or freeze their slots."""
        from li2_lightning.stages import Observation

        stops: dict[int, str] = {}
        if self._pending:
            slots = sorted(self._pending)
            idx = torch.tensor(slots, device=self.W.device)
            _, te_acc = self._member_metrics(self._slot_logits("te", idx), "te", idx)  # at θ_{t+1}
            for s, va in zip(slots, te_acc.double().cpu().tolist()):
                p = self._pending.pop(s)
                obs = Observation(epoch=p["epoch"], a_G=p["a_G"], independence=p["independence"], purity=p["purity"],
                                  coverage=p["coverage"], train_acc=p["train_acc"],
                                  val_acc=None if math.isnan(va) else va, M=float(self.M),
                                  a_G_signal=self.hparams.loss == "mse",
                                  weight_decay=self.members[s].weight_decay > 0)
                reason = self._tracks[s].observe(obs, self.policy)
                if reason is not None:
                    stops[s] = reason
        for s in range(self.S):
            if bool(self._active[s]) and s not in stops and self._steps - self._start[s] >= self._budget(s):
                stops[s] = "budget"
        if stops:
            slots = sorted(stops)
            self._finish(slots, stops)
            for s in slots:
                self._refill(s)
        if not bool(self._active.any()):
            self.trainer.should_stop = True
        elif self._compact_frozen and getattr(self, "_source_empty", False) and not bool(self._active.all()):
            self._compact()

    @torch.no_grad()
    def _finish(self, slots: list[int], reasons: dict[int, str]) -> None:
        """Record the members in ``slots`` (metrics at their stop), report each to the sink, freeze the slots."""
        if not slots:
            return
        final = self._measure_slots(slots)
        extra = self._analysis(slots) if self.hparams.analyze else [{} for _ in slots]
        for j, s in enumerate(slots):
            h = torch.cat([self._hist[self._start[s]: self._steps, s].float().cpu(), final[j: j + 1]])
            row = self._row(s, h, extra[j])
            T = h.shape[0] - 1
            row.update(stop_reason=reasons[s], stop_epoch=T, budget_epochs=self._budget(s),
                       member_index=self._serial[s],
                       params_finite=all(bool(torch.isfinite(p[s]).all()) for p in (self.W, self.V, *self.U)))
            if self._tracks[s] is not None:
                row.update(self._tracks[s].fields())
                row["stage_transitions"] = [list(t) for t in self._tracks[s].transitions]
            row["curves"] = {k: [None if math.isnan(x) or math.isinf(x) else float(str(x)) for x in v.numpy()]
                             for k, v in (("train/loss", h[:T, 0]), ("train/acc", h[:T, 1]),
                                          ("val/loss", h[1:, 2]), ("val/acc", h[1:, 3]))}
            self._records.append({"row": row, "token": self._tokens[s], "history": h, "serial": self._serial[s]})
            self._active[s] = False
            self._pending.pop(s, None)
            if self.sink is not None:
                self.sink(row, self._tokens[s])

    @torch.no_grad()
    def _refill(self, s: int) -> bool:
        """Slot s takes the source's next member (False when none is pending)."""
        nxt = None if self.source is None or getattr(self, "_source_empty", False) else self.source()
        if nxt is None:
            self._source_empty = True
            return False
        m, token = nxt
        m = m if isinstance(m, MemberSettings) else MemberSettings(**m)
        if self.spec.name != "muon" and m.muon_lr is not None:
            raise ValueError(f"muon_lr is set but optimizer={self.spec.name!r}; it applies to 'muon' only")
        if min(m.lr, m.weight_decay, m.lr if m.muon_lr is None else m.muon_lr) < 0:
            raise ValueError(f"member {m} has a negative lr, muon_lr or weight_decay; accepted: values >= 0")
        hp = self.hparams
        self.members[s], self._tokens[s], self._serial[s] = m, token, self._arrived
        self._arrived += 1
        self.split_seeds[s] = m.seed if m.split_seed is None else int(m.split_seed)
        self.n_trains[s] = resolve_n_train(self.M, m.train_fraction, m.n_train, m.p_star_multiplier, hp.p_star_c)
        with torch.random.fork_rng(devices=[]):  # exactly Li2Module's init under seed_everything(seed)
            torch.manual_seed(m.seed)
            net = TwoLayerNet(self.M, self.K, hp.activation, m.V_init_scale, hp.output_scale, hp.hidden_layers,
                              hp.residual, hp.complex_weights, hp.top_layer, hp.ridge_lambda)
        self.W[s].copy_(net.W)
        self.V[s].copy_(net.V)
        for l, u in enumerate(self.U):
            u[s].copy_(net.U[l])
        tr, te = split_pairs(self.M, self.n_trains[s], self.split_seeds[s])
        self._row_lists["tr"][s], self._row_lists["te"][s] = tr, te
        self._register_rows("tr", self._row_lists["tr"])
        self._register_rows("te", self._row_lists["te"])
        self.trainer.optimizers[0].reset_member(s, m.lr, m.weight_decay, m.lr if m.muon_lr is None else m.muon_lr)
        self._start[s] = self._steps
        self._tracks[s] = self._new_track()
        self._active[s] = True
        return True

    @torch.no_grad()
    def _compact(self) -> None:
        """Drop the frozen slots from the batch (nothing is pending for them any more)."""
        keep = self._active.nonzero().flatten()
        kd = keep.to(self.W.device)
        opt = self.trainer.optimizers[0]
        opt.keep_members(keep)  # first: it tells member-stacked state by the parameters' leading dim
        for p in (self.W, self.V, *self.U):
            p.data = p.data.index_select(0, kd)
            p.grad = None
        ks = keep.tolist()
        for name in ("members", "split_seeds", "n_trains", "_tokens", "_serial", "_start", "_tracks"):
            setattr(self, name, [getattr(self, name)[i] for i in ks])
        for prefix in ("tr", "te"):
            self._row_lists[prefix] = [self._row_lists[prefix][i] for i in ks]
            self._register_rows(prefix, self._row_lists[prefix])
        self._hist = self._hist.index_select(1, kd)
        self.S = len(ks)
        self._active = torch.ones(self.S, dtype=torch.bool)
        opt.active = self._active

    @property
    def member_epochs(self) -> int:
        """Steps taken by active members so far (with a policy: the compute the sweep spent)."""
        return self._member_epochs if self._dynamic else self._steps * self.S

    def member_histories(self) -> list[torch.Tensor]:
        """Each finished member's (T+1, 4) metrics at θ_0..θ_T, in arrival order (with
        :meth:`configure_members`)."""
        return [r["history"] for r in sorted(self._records, key=lambda r: r["serial"])]

    # ---------------------------------------------------------------- data

    def _register_rows(self, prefix: str, rows: Sequence[torch.Tensor]) -> None:
        """Per-member index pairs (S, width, 2), padded to the largest member, with a 0/1 mask."""
        M, S = self.M, len(rows)
        width = max(1, max(len(r) for r in rows))
        idx = torch.zeros(S, width, dtype=torch.long)
        mask = torch.zeros(S, width)
        for s, r in enumerate(rows):
            idx[s, : len(r)] = r
            mask[s, : len(r)] = 1.0
        h1, h2 = idx // M, idx % M
        x = torch.stack([h1, h2], -1)
        if hasattr(self, "W"):  # rows rebuilt during fit (refill): on the parameters' device
            h1, h2, x, mask = (t.to(self.W.device) for t in (h1, h2, x, mask))
        self.register_buffer(f"{prefix}_x", x, persistent=False)  # (S, width, 2)
        self.register_buffer(f"{prefix}_rows", fm.member_rows(x, M), persistent=False)  # (S·width, 2)
        y = self.grp.table.to(h1.device)[h1, h2]
        self.register_buffer(f"{prefix}_y", y, persistent=False)  # (S, width)
        self.register_buffer(f"{prefix}_Y", torch.nn.functional.one_hot(y, M).float(), persistent=False)
        self.register_buffer(f"{prefix}_mask", mask, persistent=False)
        self.register_buffer(f"{prefix}_n", mask.sum(1), persistent=False)  # (S,)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_OneStep(), batch_size=None)

    # ---------------------------------------------------------------- forward and metrics

    def logits(self, prefix: str) -> torch.Tensor:
        """Outputs (S, rows, M) of every member on its padded train (``"tr"``) or test (``"te"``) rows."""
        hp = self.hparams
        return fm.forward(self.W, self.V, getattr(self, f"{prefix}_x"), hp.activation, hp.output_scale,
                          rows=getattr(self, f"{prefix}_rows"), U=list(self.U), residual=hp.residual)

    @torch.no_grad()
    def fit_top_layer_(self) -> None:
        """``top_layer="ridge"``: each member's V ← the ridge solution of its top features on its own
        training rows (:func:`li2_lightning.analysis.layers.ridge_readout`, as ``TwoLayerNet.fit_top_layer_``)."""
        from li2_lightning.analysis.layers import ridge_readout

        hp = self.hparams
        F = fm.hidden(self.W, self.tr_x, hp.activation, list(self.U), hp.residual, rows=self.tr_rows)  # (S, rows, K)
        for s in range(self.S):
            n = int(self.tr_n[s])
            self.V[s].copy_(ridge_readout(F[s, :n], self.tr_y[s, :n], self.M, hp.ridge_lambda,
                                          hp.output_scale).to(self.V.dtype))

    def _member_metrics(self, out: torch.Tensor, prefix: str,
                        idx: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member mean loss (S,) and accuracy (S,) over the member's real rows (of members ``idx``)."""
        y, Y, mask, n = (getattr(self, f"{prefix}_{k}") for k in ("y", "Y", "mask", "n"))
        if idx is not None:
            y, Y, mask, n = (t.index_select(0, idx) for t in (y, Y, mask, n))
        rows = fm.loss_rows(self.hparams.loss, out, y, Y)  # (S, rows)
        n_safe = n.clamp(min=1)
        loss = (rows * mask).sum(-1) / n_safe
        acc = ((out.argmax(-1) == y).float() * mask).sum(-1) / n_safe
        empty = n == 0  # train_fraction 1: no test rows
        return loss.masked_fill(empty, float("nan")), acc.masked_fill(empty, float("nan"))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # test metrics before a ridge top layer is refitted: θ_t is (W_t, V fitted on W_{t-1}'s
        # features), as Li2Module's validation after step t-1 sees it
        if self.current_epoch % self.hparams.eval_every == 0:
            with torch.no_grad():
                te_loss, te_acc = self._member_metrics(self.logits("te"), "te")
        else:
            te_loss = te_acc = torch.full((self.S,), float("nan"), device=self.W.device)
        if self.hparams.top_layer == "ridge":
            self.fit_top_layer_()
        due = self._due_slots() if self._dynamic and self.policy is not None else []
        if due:  # the observables need F at θ_t: the same forward, split at F
            hp = self.hparams
            F = fm.hidden(self.W, self.tr_x, hp.activation, list(self.U), hp.residual, rows=self.tr_rows)
            out = fm.readout(F, self.V, hp.output_scale)
        else:
            out = self.logits("tr")
        tr_loss, tr_acc = self._member_metrics(out, "tr")
        if due:
            self._observe_pre_step(due, F.detach(), tr_acc)
        row = torch.stack([tr_loss.detach(), tr_acc, te_loss, te_acc], 1)  # (S, 4) at θ_t
        if self._hist is None or self._steps >= self._hist.shape[0]:
            self._grow_history()
        self._hist[self._steps].copy_(row)
        self._steps += 1
        if self._dynamic:
            self._member_epochs += int(self._active.sum())
        return tr_loss.sum()  # member s's gradient is that of its own loss

    @torch.no_grad()
    def measure(self) -> torch.Tensor:
        """(S, 4) train loss, train acc, test loss, test acc at the current parameters."""
        tr = self._member_metrics(self.logits("tr"), "tr")
        te = self._member_metrics(self.logits("te"), "te")
        return torch.stack([*tr, *te], 1)

    def on_train_epoch_end(self) -> None:
        if self._dynamic:
            self._members_epoch_end()
        epoch = self.current_epoch
        every = self.hparams.log_every_n_epochs
        if every and (epoch + 1) % every == 0 and self._steps >= 1:
            h = self._hist[self._steps - 1]
            self.log_dict({"train/loss_mean": h[:, 0].mean(), "train/acc_mean": h[:, 1].mean(),
                           "val/acc_mean": h[:, 3].nanmean()}, batch_size=1)
        thr = self.hparams.stop_at_test_acc
        if thr is not None and (epoch + 1) % self.hparams.check_every == 0 and self._steps >= 1:
            reached = bool((self.measure()[:, 3] >= thr).all())
            # across devices (population_ddp) each rank holds some members: stop when all have reached it
            if self.trainer.strategy.reduce_boolean_decision(reached, all=True):
                self._stopped_early = True
                self.trainer.should_stop = True

    def on_train_start(self) -> None:
        self._grow_history()
        if self._dynamic:
            if self.trainer.world_size > 1:  # each rank would refill and report its own slots
                raise ValueError(f"a population with a policy, member budgets or refill (configure_members) runs on "
                                 f"one device, but the Trainer has {self.trainer.world_size} processes; accepted: "
                                 "devices=1 (several sweep workers spread the points instead)")
            opt = self.trainer.optimizers[0]
            opt.active = self._active
            opt.member_step = torch.zeros(self.S, dtype=torch.float64)

    def _grow_history(self) -> None:
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        rows = max(self._steps + 1, max_epochs if max_epochs and max_epochs > 0 else 1024)
        if self._dynamic and self._hist is None:  # a population with refill: the Trainer's bound is loose
            rows = min(rows, 1024)
        if self._hist is not None and rows <= self._hist.shape[0]:
            return
        if self._hist is not None:
            rows = max(rows, 2 * self._hist.shape[0])
        new = torch.full((rows, self.S, 4), float("nan"), device=self.W.device)
        if self._hist is not None:
            new[: self._steps] = self._hist[: self._steps]
        self._hist = new

    def on_train_end(self) -> None:
        self._final = self.measure()
        if self._dynamic:
            live = [s for s in range(self.S) if bool(self._active[s])]
            self._finish(live, {s: "budget" if self._steps - self._start[s] >= self._budget(s) else "truncated"
                                for s in live})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        def column(name: str, default: Optional[str] = None) -> torch.Tensor:
            vals = [getattr(m, name) if getattr(m, name) is not None else getattr(m, default) for m in self.members]
            return torch.tensor(vals, dtype=torch.float64)  # float64: rounded to the parameters' dtype as torch does

        groups = ([{"params": [self.W], "use_muon": True}, {"params": [self.V, *self.U]}]
                  if self.spec.name == "muon" else [{"params": [self.W, self.V, *self.U]}])
        return PopulationOptimizer(groups, self.spec, lr=column("lr"), weight_decay=column("weight_decay"),
                                   muon_lr=column("muon_lr", "lr"))

    # ---------------------------------------------------------------- results

    def history(self) -> torch.Tensor:
        """(T+1, S, 4) metrics at θ_0..θ_T (columns train loss, train acc, test loss, test acc), CPU."""
        rows = [] if self._hist is None else [self._hist[: self._steps]]
        if self._final is not None:
            rows.append(self._final[None])
        if not rows:
            return torch.empty(0, self.S, 4)
        return torch.cat(rows).float().cpu()

    def lightning_metrics(self) -> dict[str, torch.Tensor]:
        """Per-epoch curves with ``Li2Module``'s timing, each (epochs, S): train/* at θ_e, val/* at θ_{e+1}."""
        h = self.history()
        E = h.shape[0] - 1
        return {"train/loss": h[:E, :, 0], "train/acc": h[:E, :, 1],
                "val/loss": h[1:, :, 2], "val/acc": h[1:, :, 3]}

    def results(self) -> list[dict]:
        """One dict per member: its settings, steps to train acc 1 and test acc 0.5 / 0.99 (None
        if never), final accuracies and losses, and energy / coverage when ``analyze``.

        With :meth:`configure_members`, one row per member that has finished, in arrival order,
        each describing the member up to its stop: ``epochs`` and ``stop_epoch`` are the steps it
        took, ``final_*`` its metrics at the stop, ``epochs_to_*`` None when not reached before
        the stop (a stopped member's full-budget values are unknown, never filled in);
        ``stop_reason`` is ``done`` or ``stalled`` (the policy), ``budget`` (its own max_epochs) or
        ``truncated`` (the Trainer ended first); ``stage_<stage>_epoch`` the first epoch of each
        stage (None if never), ``stage_final`` and ``curves`` as ``lightning_metrics``.
        """
        if self._dynamic:
            return [r["row"] for r in sorted(self._records, key=lambda r: r["serial"])]
        h = self.history()
        T = h.shape[0] - 1
        extra = self._analysis() if self.hparams.analyze and T >= 0 else [{}] * self.S
        return [self._row(s, h[:, s], extra[s]) for s in range(self.S)]

    def _row(self, s: int, h: torch.Tensor, extra: dict) -> dict:
        """The results row of the member in slot s with metrics h (T+1, 4) at θ_0..θ_T."""
        T = h.shape[0] - 1
        hp = self.hparams
        m = self.members[s]
        row = {"group": self.grp.name, "M": self.M, "K": self.K, "seed": m.seed,
               "split_seed": self.split_seeds[s], "n_train": self.n_trains[s],
               "train_fraction": self.n_trains[s] / self.M**2, "lr": m.lr,
               "weight_decay": m.weight_decay, "V_init_scale": m.V_init_scale,
               "optimizer": self.spec.name, "activation": hp.activation, "loss": hp.loss,
               "hidden_layers": hp.hidden_layers, "residual": hp.residual,
               "complex_weights": hp.complex_weights, "top_layer": hp.top_layer,
               **({"ridge_lambda": hp.ridge_lambda} if hp.top_layer == "ridge" else {}),
               "epochs": T, "stopped_early": self._stopped_early}
        if self.spec.name == "muon":
            row["muon_lr"] = m.lr if m.muon_lr is None else m.muon_lr
            row["preset"] = self.spec.preset
        for metric, thr in THRESHOLDS:
            col = _METRICS.index(metric)
            hit = (h[:, col] >= thr - 1e-6).nonzero()
            row[f"epochs_to_{metric}_{thr:g}"] = int(hit[0, 0]) if len(hit) else None
        for col, metric in enumerate(_METRICS):
            v = float(h[-1, col]) if T >= 0 else float("nan")
            row[f"final_{metric}"] = None if math.isnan(v) else v
            row[f"best_{metric}"] = (None if T < 0 or "loss" in metric or math.isnan(v)
                                     else float(h[:, col].nan_to_num(nan=-1.0).max()))
        row.pop("best_train_loss"), row.pop("best_test_loss")
        row.update(extra)
        return row

    @torch.no_grad()
    def _analysis(self, slots: Optional[Sequence[int]] = None) -> list[dict]:
        """Per-member mean normalized energy (train rows) and irrep coverage of the first layer W;
        {} where unavailable. With complex weights the coverage is that of [Re W, Im W] (2K nodes)
        and the energy, defined for a real σ(Xw), is left out (docs/theory.md §10)."""
        try:
            from li2_lightning.analysis.energy import normalized_energy
            from li2_lightning.analysis.irreps import fourier_blocks, is_cyclic_table, real_blocks
        except ImportError:  # analysis helpers not installed: results simply lack these columns
            return [{} for _ in (range(self.S) if slots is None else slots)]
        table = self.grp.table
        basis = fourier_blocks(self.M) if is_cyclic_table(table) else real_blocks(table)
        rows = []
        for s in (range(self.S) if slots is None else slots):
            W = self.W[s].detach().cpu()
            if W.is_complex():
                rows.append(coverage(torch.cat([W.real, W.imag], dim=1), basis))
                continue
            n = int(self.tr_n[s])
            x = self.tr_x[s, :n].cpu()
            y = self.tr_y[s, :n].cpu()
            E = normalized_energy(W, x, y, self.hparams.activation)
            rows.append({"energy_mean": float(E.mean()), **coverage(W, basis)})
        return rows


def coverage(W: torch.Tensor, basis, purity_threshold: float = 0.9) -> dict:
    """Mean feature purity and irrep coverage of a first layer W (2M, K) (docs/theory.md §6, item 5).

    Thin wrapper over :mod:`li2_lightning.analysis.features` (float64 there).

    Returns:
        ``{"purity_mean": float, "coverage": float}``.
    """
    power = features.irrep_power(W, basis)  # (K, 2, B)
    return {"purity_mean": float(features.purity(power).mean()),
            "coverage": features.coverage(power, purity_threshold)}


def train_population(module: PopulationModule, max_epochs: int, accelerator: str = "auto",
                     devices: Union[int, str, list] = 1, precision=None, callbacks=None,
                     strategy: Union[str, pl.strategies.Strategy, None] = None) -> list[dict]:
    """Fit ``module`` for ``max_epochs`` full-batch steps with a quiet Trainer; return its results.

    With ``devices`` asking for more than one device or process (``2``, ``[0, 1]``; on CPU, N
    processes with gloo), the members are spread over them by
    :class:`~li2_lightning.population_ddp.MemberParallelStrategy` (each rank trains its own members,
    no gradient exchange) unless ``strategy`` names another; the results are the whole population's.

    On CPU, call ``torch.set_flush_denormal(True)`` first for long runs (``li2 sweep`` does): late
    in training Adam's second moments of dead nodes become subnormal floats, and x86 arithmetic on
    them slowed a Z89 population 40-fold.
    """
    n_devices = len(devices) if isinstance(devices, (list, tuple)) else (
        int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1)
    if strategy is None and n_devices > 1:
        from li2_lightning.population_ddp import MemberParallelStrategy

        strategy = MemberParallelStrategy()
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator=accelerator, devices=devices,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=callbacks, **({"precision": precision} if precision else {}),
                         **({"strategy": strategy, "use_distributed_sampler": False} if strategy else {}))
    trainer.fit(module)
    return module.results()
