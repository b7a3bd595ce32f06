"""Population training: S independent two-layer nets trained as one batched computation.

A sweep point of the Li2 experiments is tiny (one Z_M table, one 2M×K and one K×M matrix); one of
them cannot keep a machine busy. :class:`PopulationModule` stacks S members of the same shape,
W (S, 2M, K) and V (S, K, M), and trains them in one forward and backward per step:

- every member has its own init seed, split seed, train size, learning rate, weight decay and
  V init scale; its train and test rows are index lists into the M² table (padded to the largest
  member, with a 0/1 weight), so each step yields every member's train metrics (at the parameters
  the step saw) and test metrics from the same batched forward;
- the loss is the sum of the members' losses, so member s's gradient is exactly the gradient of its
  own loss; :class:`PopulationOptimizer` applies Adam (coupled L2), AdamW, SGD or Muon (on W, with
  Adam on V) with per-member hyperparameters, so members never interact.

Member s is initialised exactly as ``Li2Module`` is under ``seed_everything(seed_s)`` (the global
RNG seeded, then ``TwoLayerNet`` drawn, W first), and its metrics follow ``Li2Module``'s timing:
``train/acc`` at epoch e is measured at θ_e (before step e), ``val/acc`` at θ_{e+1}.
``tests/test_population.py`` checks that 8 members match 8 separate ``Li2Module`` runs.

Per-member results (:meth:`PopulationModule.results`) count *steps*: ``epochs_to_test_acc_0.5 = t``
means the parameters after t full-batch steps were the first with test accuracy ≥ 0.5.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from li2_lightning.analysis import features
from li2_lightning.data import P_STAR_C, resolve_n_train, split_pairs
from li2_lightning.groups import make_group
from li2_lightning.losses import check_loss
from li2_lightning.nets import TwoLayerNet, activation_fn, check_M_K

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
THRESHOLDS = (("train_acc", 1.0), ("test_acc", 0.5), ("test_acc", 0.99))
_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")

Floats = Union[float, Sequence[float]]


def _per_member(name: str, value, S: int, cast=float) -> list:
    """Broadcast a scalar to S members, or check a list has S entries."""
    if value is None:
        return [None] * S
    if isinstance(value, (list, tuple)):
        if len(value) != S:
            raise ValueError(f"{name} has {len(value)} entries but there are {S} members (len(seeds)); "
                             "give one value per member or a single value for all")
        return [None if v is None else cast(v) for v in value]
    return [cast(value)] * S


class PopulationOptimizer(torch.optim.Optimizer):
    """Adam / AdamW / SGD / Muon on stacked parameters (S, ...) with per-member lr and weight decay.

    Each parameter's leading dim indexes members; a member's update reads only its own slice, so S
    members behave as S separate optimizers. The arithmetic follows torch's single-tensor Adam, AdamW
    and SGD, and ``li2_lightning.optim.Muon(preset="li2")`` (SPEC §8), up to rounding.

    Args:
        params: the stacked parameters; with ``rule="muon"`` pass two groups, ``{"params": [W],
            "muon": True}`` and ``{"params": [V]}``.
        rule: ``"adam"`` (coupled L2), ``"adamw"`` (decoupled), ``"sgd"`` or ``"muon"`` (Muon on
            the groups flagged ``muon``, coupled-L2 Adam on the others).
        lr: (S,) learning rates (Adam / SGD).
        weight_decay: (S,) weight decays.
        muon_lr: (S,) Muon step sizes (default: ``lr``).
        betas, eps: Adam's.
        momentum: SGD momentum (no dampening, no Nesterov); Muon's EMA coefficient is 0.99.

    Raises:
        ValueError: on an unknown rule or a negative lr / weight decay.
    """

    def __init__(self, params, rule: str, lr: torch.Tensor, weight_decay: torch.Tensor,
                 muon_lr: Optional[torch.Tensor] = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, momentum: float = 0.0, muon_momentum: float = 0.99) -> None:
        if rule not in OPTIMIZERS:
            raise ValueError(f"optimizer={rule!r} is not supported; accepted: {list(OPTIMIZERS)}")
        if bool((lr < 0).any()) or bool((weight_decay < 0).any()):
            raise ValueError(f"lr={lr.tolist()} / weight_decay={weight_decay.tolist()}: accepted: >= 0")
        if rule == "muon":
            from li2_lightning.optim.newton_schulz import LI2_COEFFICIENTS  # noqa: F401 (fail early)
        defaults = dict(rule=rule, lr=lr, weight_decay=weight_decay,
                        muon_lr=lr if muon_lr is None else muon_lr, betas=betas, eps=eps,
                        momentum=momentum, muon_momentum=muon_momentum, muon=False)
        super().__init__(params, defaults)

    @staticmethod
    def _col(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """(S,) -> (S, 1, ..., 1) on p's device, to broadcast over a member's slice."""
        return t.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group["rule"] == "muon" and group["muon"]:
                    self._muon(p, group, state)
                elif group["rule"] == "sgd":
                    self._sgd(p, group, state)
                else:
                    self._adam(p, group, state, decoupled=group["rule"] == "adamw")
        return loss

    def _adam(self, p, group, state, decoupled: bool) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = self._col(group["lr"], p), self._col(group["weight_decay"], p)
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = state["step"].item()
        grad = p.grad
        if decoupled:
            p.mul_(1 - lr * wd)
        else:
            grad = grad + wd * p  # wd 0 adds exact zeros: that member is plain Adam
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        p.sub_(lr / (1 - beta1**step) * state["exp_avg"] / denom)

    def _sgd(self, p, group, state) -> None:
        lr, wd = self._col(group["lr"], p), self._col(group["weight_decay"], p)
        grad = p.grad + wd * p
        if group["momentum"] != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
            grad = state["momentum_buffer"]
        p.sub_(lr * grad)

    def _muon(self, p, group, state) -> None:
        from li2_lightning.optim.newton_schulz import LI2_COEFFICIENTS, newton_schulz

        lr, wd = self._col(group["muon_lr"], p), self._col(group["weight_decay"], p)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["muon_momentum"])  # m ← 0.99 m + 0.01 g
        O = newton_schulz(buf, LI2_COEFFICIENTS, 5, dtype=torch.float32)  # per-member NS, (S, 2M, K)
        p.mul_(1 - lr * wd)  # decoupled decay before the update
        p.sub_(lr * O)


class _OneStep(Dataset):
    """One dummy batch per epoch: the data lives in the module as index buffers."""

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(1)

    def __len__(self) -> int:
        return 1


class PopulationModule(pl.LightningModule):
    """S independent Li2 two-layer nets on one group, trained as one batched computation.

    Per-member settings take a single value (shared) or a list with one entry per seed. The train
    size is set by at most one of ``train_fraction``, ``n_train``, ``p_star_multiplier`` (default
    train fraction 0.4). Train with ``Trainer(max_epochs=...).fit(module)``: the module serves its
    own one-batch-per-epoch loader (full batch, the paper's epoch).

    Args:
        group: group spec for :func:`~li2_lightning.groups.make_group`.
        K: hidden width.
        seeds: init seed of each member (member s is ``TwoLayerNet`` drawn after
            ``torch.manual_seed(seeds[s])``); S = len(seeds).
        split_seeds: train/test split seed of each member (default: the init seed).
        train_fraction, n_train, p_star_multiplier: train size per member (one of them).
        p_star_c: c in p* = c ln M / M.
        lr: learning rate per member (Adam's, SGD's; Adam on V under Muon).
        weight_decay: weight decay per member (coupled L2 for adam/sgd/muon's Adam part,
            decoupled for adamw and Muon's W).
        muon_lr: Muon's step on W per member (default: ``lr``); only with ``optimizer="muon"``.
        V_init_scale: multiplier on V's initial values per member (0: zero-init V).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"muon"``.
        betas, eps: Adam's; momentum: SGD's.
        activation, loss, output_scale: as for ``Li2Module``.
        stop_at_test_acc: stop training once every member's test accuracy is at least this
            (checked every ``check_every`` epochs); None trains for the Trainer's max_epochs.
        check_every: epochs between stop checks (each costs one device sync).
        eval_every: measure test metrics at θ_t only when t is a multiple of this (and at the
            end); 1 gives every epoch. With a small train fraction the test rows dominate the
            cost, so sweeps that need only final accuracies and epochs-to-grok at a coarser
            resolution set 5-20. Unmeasured entries of :meth:`history` are NaN.
        log_every_n_epochs: epochs between logging the population means (0: never).
        analyze: compute per-member energy and irrep coverage in :meth:`results`.

    Raises:
        ValueError: on an empty ``seeds``, a per-member list of the wrong length, or any setting
            ``Li2Module`` / ``GroupArithmeticDataModule`` would refuse.
    """

    def __init__(
        self,
        group: str = "Z23",
        K: int = 512,
        seeds: Sequence[int] = (0,),
        split_seeds: Optional[Sequence[int]] = None,
        train_fraction: Optional[Floats] = None,
        n_train: Optional[Union[int, Sequence[int]]] = None,
        p_star_multiplier: Optional[Floats] = None,
        p_star_c: float = P_STAR_C,
        lr: Floats = 1e-3,
        weight_decay: Floats = 2e-4,
        muon_lr: Optional[Floats] = None,
        V_init_scale: Floats = 1.0,
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
        activation: str = "sqr",
        loss: str = "mse",
        output_scale: float = 1.0,
        stop_at_test_acc: Optional[float] = None,
        check_every: int = 50,
        eval_every: int = 1,
        log_every_n_epochs: int = 0,
        analyze: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        seeds = [int(s) for s in seeds]
        S = len(seeds)
        if S == 0:
            raise ValueError("seeds=[] gives an empty population; accepted: one init seed per member")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is not supported; accepted: {list(OPTIMIZERS)}")
        if muon_lr is not None and optimizer != "muon":
            raise ValueError(f"muon_lr={muon_lr!r} is set but optimizer={optimizer!r}; it applies to 'muon' only")
        activation_fn(activation)
        check_loss(loss)
        for name, value in (("check_every", check_every), ("eval_every", eval_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not accepted; accepted: an integer >= 1")
        self.grp = make_group(group)
        M = self.M = self.grp.order
        check_M_K(M, K)
        self.S, self.K = S, K
        self.seeds = seeds
        self.split_seeds = [int(s) for s in (seeds if split_seeds is None else _per_member("split_seeds", split_seeds, S, int))]
        fr = _per_member("train_fraction", train_fraction, S)
        nt = _per_member("n_train", n_train, S, int)
        pm = _per_member("p_star_multiplier", p_star_multiplier, S)
        self.n_trains = [resolve_n_train(M, fr[s], nt[s], pm[s], p_star_c) for s in range(S)]
        self.lrs = _per_member("lr", lr, S)
        self.wds = _per_member("weight_decay", weight_decay, S)
        self.muon_lrs = self.lrs if muon_lr is None else _per_member("muon_lr", muon_lr, S)
        self.V_scales = _per_member("V_init_scale", V_init_scale, S)
        for name, vals in (("lr", self.lrs), ("weight_decay", self.wds), ("muon_lr", self.muon_lrs)):
            if any(v < 0 for v in vals):
                raise ValueError(f"{name}={vals} is not accepted; accepted: values >= 0")
        self.sigma = activation_fn(activation)

        # member s drawn exactly as Li2Module under seed_everything(seeds[s]); the global RNG is kept
        Ws, Vs = [], []
        with torch.random.fork_rng(devices=[]):
            for s in range(S):
                torch.manual_seed(seeds[s])
                net = TwoLayerNet(M, K, activation, self.V_scales[s], output_scale)
                Ws.append(net.W.detach())
                Vs.append(net.V.detach())
        self.W = torch.nn.Parameter(torch.stack(Ws))  # (S, 2M, K)
        self.V = torch.nn.Parameter(torch.stack(Vs))  # (S, K, M)

        tr, te = zip(*(split_pairs(M, self.n_trains[s], self.split_seeds[s]) for s in range(S)))
        self._register_rows("tr", tr)
        self._register_rows("te", te)
        # metrics at θ_0..θ_T, (T+1, S, 4), preallocated on the device at fit start: appending a
        # small tensor per step grew the process by ~0.25 MB an epoch (allocator fragmentation)
        self._hist: Optional[torch.Tensor] = None
        self._steps = 0  # rows of _hist filled by training steps
        self._final: Optional[torch.Tensor] = None
        self._stopped_early = False

    # ---------------------------------------------------------------- data

    def _register_rows(self, prefix: str, rows: Sequence[torch.Tensor]) -> None:
        """Padded per-member rows as flat gather offsets into W viewed as (S·2M, K)."""
        M, S = self.M, self.S
        width = max(1, max(len(r) for r in rows))
        idx = torch.zeros(S, width, dtype=torch.long)
        mask = torch.zeros(S, width)
        for s, r in enumerate(rows):
            idx[s, : len(r)] = r
            mask[s, : len(r)] = 1.0
        h1, h2 = idx // M, idx % M
        base = (torch.arange(S) * 2 * M)[:, None]
        # (S·width, 2): the two rows of W (flattened to (S·2M, K)) that one-hot X picks for a pair
        self.register_buffer(f"{prefix}_idx", torch.stack([base + h1, base + M + h2], -1).reshape(-1, 2),
                             persistent=False)
        y = self.grp.table[h1, h2]
        self.register_buffer(f"{prefix}_y", y, persistent=False)  # (S, width)
        self.register_buffer(f"{prefix}_Y", torch.nn.functional.one_hot(y, M).float(), persistent=False)
        self.register_buffer(f"{prefix}_mask", mask, persistent=False)
        self.register_buffer(f"{prefix}_n", mask.sum(1), persistent=False)  # (S,)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_OneStep(), batch_size=None)

    # ---------------------------------------------------------------- forward and metrics

    def logits(self, prefix: str) -> torch.Tensor:
        """Outputs (S, rows, M) of every member on its padded train (``"tr"``) or test (``"te"``) rows."""
        Wf = self.W.reshape(-1, self.K)  # (S·2M, K)
        # XW per member as one fused gather-and-add (measured ~8% faster than two index_selects)
        Z = torch.nn.functional.embedding_bag(getattr(self, f"{prefix}_idx"), Wf, mode="sum")  # (S·rows, K)
        F = self.sigma(Z).view(self.S, -1, self.K)  # (S, rows, K)
        out = torch.bmm(F, self.V)  # (S, rows, M)
        scale = self.hparams.output_scale
        return out if scale == 1.0 else out * scale

    def _member_metrics(self, out: torch.Tensor, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member mean loss (S,) and accuracy (S,) over the member's real rows."""
        y, mask, n = (getattr(self, f"{prefix}_{k}") for k in ("y", "mask", "n"))
        if self.hparams.loss == "mse":
            resid = out - out.mean(-1, keepdim=True) + 1.0 / self.M - getattr(self, f"{prefix}_Y")
            rows = resid.square().sum(-1)  # (S, rows)
        else:
            rows = torch.nn.functional.cross_entropy(out.transpose(1, 2), y, reduction="none")
        n_safe = n.clamp(min=1)
        loss = (rows * mask).sum(-1) / n_safe
        acc = ((out.argmax(-1) == y).float() * mask).sum(-1) / n_safe
        empty = n == 0  # train_fraction 1: no test rows
        return loss.masked_fill(empty, float("nan")), acc.masked_fill(empty, float("nan"))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        tr_loss, tr_acc = self._member_metrics(self.logits("tr"), "tr")
        if self.current_epoch % self.hparams.eval_every == 0:
            with torch.no_grad():
                te_loss, te_acc = self._member_metrics(self.logits("te"), "te")
        else:
            te_loss = te_acc = torch.full_like(tr_acc, float("nan"))
        row = torch.stack([tr_loss.detach(), tr_acc, te_loss, te_acc], 1)  # (S, 4) at θ_t
        if self._hist is None or self._steps >= self._hist.shape[0]:
            self._grow_history()
        self._hist[self._steps].copy_(row)
        self._steps += 1
        return tr_loss.sum()  # member s's gradient is that of its own loss

    @torch.no_grad()
    def measure(self) -> torch.Tensor:
        """(S, 4) train loss, train acc, test loss, test acc at the current parameters."""
        tr = self._member_metrics(self.logits("tr"), "tr")
        te = self._member_metrics(self.logits("te"), "te")
        return torch.stack([*tr, *te], 1)

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch
        every = self.hparams.log_every_n_epochs
        if every and (epoch + 1) % every == 0 and self._steps >= 1:
            h = self._hist[self._steps - 1]
            self.log_dict({"train/loss_mean": h[:, 0].mean(), "train/acc_mean": h[:, 1].mean(),
                           "val/acc_mean": h[:, 3].nanmean()}, batch_size=1)
        thr = self.hparams.stop_at_test_acc
        if thr is not None and (epoch + 1) % self.hparams.check_every == 0 and self._steps >= 1:
            if bool((self.measure()[:, 3] >= thr).all()):
                self._stopped_early = True
                self.trainer.should_stop = True

    def on_train_start(self) -> None:
        self._grow_history()

    def _grow_history(self) -> None:
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        rows = max(self._steps + 1, max_epochs if max_epochs and max_epochs > 0 else 1024)
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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        groups = ([{"params": [self.W], "muon": True}, {"params": [self.V]}]
                  if hp.optimizer == "muon" else [{"params": [self.W, self.V]}])
        return PopulationOptimizer(groups, hp.optimizer, lr=t(self.lrs), weight_decay=t(self.wds),
                                   muon_lr=t(self.muon_lrs), betas=tuple(hp.betas), eps=hp.eps,
                                   momentum=hp.momentum)

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
        if never), final accuracies and losses, and energy / coverage when ``analyze``."""
        h = self.history()
        T = h.shape[0] - 1
        hp = self.hparams
        extra = self._analysis() if hp.analyze and T >= 0 else [{}] * self.S
        out = []
        for s in range(self.S):
            row = {"group": self.grp.name, "M": self.M, "K": self.K, "seed": self.seeds[s],
                   "split_seed": self.split_seeds[s], "n_train": self.n_trains[s],
                   "train_fraction": self.n_trains[s] / self.M**2, "lr": self.lrs[s],
                   "weight_decay": self.wds[s], "V_init_scale": self.V_scales[s],
                   "optimizer": hp.optimizer, "activation": hp.activation, "loss": hp.loss,
                   "epochs": T, "stopped_early": self._stopped_early}
            if hp.optimizer == "muon":
                row["muon_lr"] = self.muon_lrs[s]
            for metric, thr in THRESHOLDS:
                col = _METRICS.index(metric)
                hit = (h[:, s, col] >= thr - 1e-6).nonzero()
                row[f"epochs_to_{metric}_{thr:g}"] = int(hit[0, 0]) if len(hit) else None
            for col, metric in enumerate(_METRICS):
                v = float(h[-1, s, col]) if T >= 0 else float("nan")
                row[f"final_{metric}"] = None if math.isnan(v) else v
                row[f"best_{metric}"] = (None if T < 0 or "loss" in metric or math.isnan(v)
                                         else float(h[:, s, col].nan_to_num(nan=-1.0).max()))
            row.pop("best_train_loss"), row.pop("best_test_loss")
            row.update(extra[s])
            out.append(row)
        return out

    @torch.no_grad()
    def _analysis(self) -> list[dict]:
        """Per-member mean normalized energy (train rows) and irrep coverage; {} where unavailable."""
        try:
            from li2_lightning.analysis.energy import normalized_energy
            from li2_lightning.analysis.irreps import fourier_blocks, is_cyclic_table, real_blocks
        except ImportError:  # analysis helpers not installed: results simply lack these columns
            return [{} for _ in range(self.S)]
        table = self.grp.table
        basis = fourier_blocks(self.M) if is_cyclic_table(table) else real_blocks(table)
        rows = []
        for s in range(self.S):
            W = self.W[s].detach().cpu()
            n = int(self.tr_n[s])
            x = self.tr_idx.view(self.S, -1, 2)[s, :n].cpu() - s * 2 * self.M
            x[:, 1] -= self.M
            y = self.tr_y[s, :n].cpu()
            E = normalized_energy(W, x, y, self.hparams.activation)
            rows.append({"energy_mean": float(E.mean()), **coverage(W, basis)})
        return rows


def coverage(W: torch.Tensor, basis, purity_threshold: float = 0.9) -> dict:
    """Mean feature purity and irrep coverage of a first layer W (2M, K) (SPEC §6, item 5).

    Thin wrapper over :mod:`li2_lightning.analysis.features` (float64 there).

    Returns:
        ``{"purity_mean": float, "coverage": float}``.
    """
    power = features.irrep_power(W, basis)  # (K, 2, B)
    return {"purity_mean": float(features.purity(power).mean()),
            "coverage": features.coverage(power, purity_threshold)}


def train_population(module: PopulationModule, max_epochs: int, accelerator: str = "auto",
                     devices: Union[int, str] = 1, precision=None, callbacks=None) -> list[dict]:
    """Fit ``module`` for ``max_epochs`` full-batch steps with a quiet Trainer; return its results.

    On CPU, call ``torch.set_flush_denormal(True)`` first for long runs (``li2 sweep`` does): late
    in training Adam's second moments of dead nodes become subnormal floats, and x86 arithmetic on
    them slowed a Z89 population 40-fold.
    """
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator=accelerator, devices=devices,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=callbacks, **({"precision": precision} if precision else {}))
    trainer.fit(module)
    return module.results()
