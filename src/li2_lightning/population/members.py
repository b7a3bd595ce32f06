"""Members with their own lives: per-member budgets, stages, stops and refill of freed slots.

:class:`MemberLives` is the part of :class:`~li2_lightning.population.PopulationModule` that
:meth:`~MemberLives.configure_members` switches on: each member has its own budget, its stages
are tracked by the rule of docs/theory.md §7 from batched observables, a
:class:`~li2_lightning.population_policy.StopPolicy` stops those that are done or stalled, and a
stopped member's slot is frozen (the optimizer's ``active`` mask) or taken by the next pending
member, with a fresh init, split, optimizer state and step count (continuous batching).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch

from li2_lightning.data import split_pairs
from li2_lightning.functional import model as fm
from li2_lightning.population.settings import MemberSettings
from li2_lightning.population_policy import MemberTrack, StopPolicy, member_observables
from li2_lightning.stages import Observation


class MemberLives:
    """Per-member lives for :class:`~li2_lightning.population.PopulationModule` (a mixin: it uses
    the module's parameters, rows, history and metrics)."""

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
        self._init_slots(tokens)

    def _init_slots(self, tokens: Optional[Sequence[Any]]) -> None:
        """Per-slot bookkeeping of the members' lives, one entry per slot."""
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
        self.members[s], self._tokens[s], self._serial[s] = m, token, self._arrived
        self._arrived += 1
        self.split_seeds[s], self.n_trains[s] = self._member_split(m)
        net = self._draw_net(m)
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
        opt = self.trainer.optimizers[0]
        opt.keep_members(keep)  # first: it tells member-stacked state by the parameters' leading dim
        self.keep_members(keep.tolist())
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
