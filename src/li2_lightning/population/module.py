"""The population module: S independent Li2 nets on one group, trained as one batched computation.

Member s is initialised exactly as ``Li2Module`` is under ``seed_everything(seed_s)`` (the global
RNG seeded, then ``TwoLayerNet`` drawn, W first), and its metrics follow ``Li2Module``'s timing:
``train/acc`` at epoch e is measured at θ_e (before step e), ``val/acc`` at θ_{e+1}. Its train and
test rows are index lists into the M² table (padded to the largest member, with a 0/1 weight); the
loss is the sum of the members' losses, so member s's gradient is exactly that of its own loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from li2_lightning.data import P_STAR_C, resolve_n_train, split_pairs
from li2_lightning.functional import model as fm
from li2_lightning.groups import make_group
from li2_lightning.nets import NetSpec, TwoLayerNet
from li2_lightning.population.members import MemberLives
from li2_lightning.population.optimizer import PopulationOptimizer
from li2_lightning.population.results import PopulationResults
from li2_lightning.population.settings import MemberSettings, OptimizerSpec


class _OneStep(Dataset):
    """One dummy batch per epoch: the data lives in the module as index buffers."""

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(1)

    def __len__(self) -> int:
        return 1


class PopulationModule(MemberLives, PopulationResults, pl.LightningModule):
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
        self.save_hyperparameters(ignore=["members", "optimizer", "policy", "source", "sink", "tokens",
                                          "member_max_epochs"])
        self.hparams.update(members=[dataclasses.asdict(m) for m in members], optimizer=dataclasses.asdict(spec))
        net_spec = NetSpec(activation, output_scale, hidden_layers, residual, complex_weights, top_layer, ridge_lambda)
        fm.check_loss(loss)
        self.net_spec = net_spec.check_loss(loss)
        self._check_settings(members, spec)
        self.grp = make_group(group)
        self.M = self.grp.order
        fm.check_M_K(self.M, K)
        self.S, self.K, self.members, self.spec = len(members), K, members, spec
        self._draw_members()
        self._init_rows()
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

    def _check_settings(self, members: list[MemberSettings], spec: OptimizerSpec) -> None:
        """Refuse what ``Li2Module`` would refuse, and per-member settings the optimizer cannot take."""
        hp = self.hparams
        if hp.complex_weights and spec.name == "muon":
            raise ValueError("complex_weights=True with optimizer='muon': Muon's Newton-Schulz step is defined for "
                             "real matrices; accepted: 'adam', 'adamw' or 'sgd'")
        for name in ("check_every", "eval_every"):
            value = hp[name]
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not accepted; accepted: an integer >= 1")
        if spec.name != "muon" and any(m.muon_lr is not None for m in members):
            raise ValueError(f"muon_lr is set but optimizer={spec.name!r}; it applies to 'muon' only")
        for name in ("lr", "weight_decay", "muon_lr"):
            vals = [getattr(m, name) for m in members]
            if any(v is not None and v < 0 for v in vals):
                raise ValueError(f"{name}={vals} is not accepted; accepted: values >= 0")

    def _draw_net(self, m: MemberSettings) -> TwoLayerNet:
        """Member ``m``'s net, drawn exactly as Li2Module's under ``seed_everything(m.seed)``; the
        global RNG is kept."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(m.seed)
            return TwoLayerNet.from_spec(self.M, self.K, self.net_spec, m.V_init_scale)

    def _draw_members(self) -> None:
        """The stacked parameters W (S, 2M, K), V (S, K, M), U (S, K, K) per layer 2..L."""
        nets = [self._draw_net(m) for m in self.members]
        self.W = torch.nn.Parameter(torch.stack([net.W.detach() for net in nets]))  # (S, 2M, K)
        self.V = torch.nn.Parameter(torch.stack([net.V.detach() for net in nets]),  # (S, K, M)
                                    requires_grad=self.hparams.top_layer == "learned")
        self.U = torch.nn.ParameterList(  # layers 2..L, each (S, K, K)
            [torch.nn.Parameter(torch.stack([net.U[l].detach() for net in nets]))
             for l in range(self.hparams.hidden_layers - 1)])

    def _member_split(self, m: MemberSettings) -> tuple[int, int]:
        """Member ``m``'s split seed and train size."""
        split_seed = m.seed if m.split_seed is None else int(m.split_seed)
        return split_seed, resolve_n_train(self.M, m.train_fraction, m.n_train, m.p_star_multiplier,
                                           self.hparams.p_star_c)

    def _init_rows(self) -> None:
        """Every member's train and test rows (its own split) as padded index buffers."""
        self.split_seeds, self.n_trains = (list(c) for c in zip(*(self._member_split(m) for m in self.members)))
        tr, te = zip(*(split_pairs(self.M, self.n_trains[s], self.split_seeds[s]) for s in range(self.S)))
        self._row_lists = {"tr": list(tr), "te": list(te)}
        self._register_rows("tr", tr)
        self._register_rows("te", te)

    @torch.no_grad()
    def keep_members(self, slots: list[int]) -> None:
        """Cut the population to the members in ``slots``, in that order: parameters, settings,
        rows, history and the per-slot state of :meth:`configure_members` (the optimizer's state is
        cut by :meth:`PopulationOptimizer.keep_members`)."""
        idx = torch.tensor(slots, dtype=torch.long)
        for p in (self.W, self.V, *self.U):
            p.data = p.data.index_select(0, idx.to(p.device))
            p.grad = None
        names = ("members", "split_seeds", "n_trains")
        if self._dynamic:
            names += ("_tokens", "_serial", "_start", "_tracks")
        for name in names:
            setattr(self, name, [getattr(self, name)[i] for i in slots])
        for prefix in ("tr", "te"):
            self._row_lists[prefix] = [self._row_lists[prefix][i] for i in slots]
            self._register_rows(prefix, self._row_lists[prefix])
        if self._hist is not None:
            self._hist = self._hist.index_select(1, idx.to(self._hist.device))
        self.S = len(slots)

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
