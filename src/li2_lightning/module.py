"""Li2Module: the LightningModule that trains the two-layer net on group arithmetic."""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from li2_lightning.checkpoint import check_compatible, optimizer_signature
from li2_lightning.data import train_size_settings
from li2_lightning.hooks import HookPoint
from li2_lightning.losses import check_loss, loss_sum
from li2_lightning.memory import check_fits
from li2_lightning.nets import NetSpec, TwoLayerNet, activation_fn, check_M_K
from li2_lightning.probe import Li2Probe

# The accepted names as types, so that the CLI's parser lists them in --help and refuses others at
# parse time; tests check them against the functional registries.
ActivationName = Literal["sqr", "relu", "silu", "relusqr"]
LossName = Literal["mse", "ce"]
TopLayerName = Literal["learned", "ridge"]


def default_optimizer(params) -> torch.optim.Optimizer:
    """Adam, lr 1e-3, coupled L2 weight decay 2e-4: the paper's Fig. 3 setting."""
    return torch.optim.Adam(params, lr=1e-3, weight_decay=2e-4)


# True in every case below: a checkpoint of an epoch is written only after that epoch's check (the
# validation loss, or without validation the training loss at the new weights) has passed.
_NAN_ADVICE = ("lower the learning rate or output_scale; every checkpoint written so far holds finite "
               "weights whose loss was checked finite (resume from one with --ckpt_path)")


# Said once per process: what the two-layer monitors mean on a model variant (docs/theory.md §10).
_VARIANT_DIAGNOSTICS = (
    "Li2Module with hidden_layers > 1, complex_weights or top_layer='ridge': the monitors of "
    "li2_lightning.callbacks read the probe's W (first layer) and V and the top hidden layer's F. For a deep "
    "net F is the top layer's, while energy, purity and coverage describe W, and the ridge/η diagnostics "
    "(r_V, G_F(∞)) assume the two-layer fixed point; with complex weights these monitors are not defined "
    "(their σ(XW) is real). Use li2_lightning.callbacks.LayerMonitor for per-layer G_l, alignment, movement, "
    "features and onset epochs (docs/theory.md §10).")


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or the weights turn NaN or infinite, before any checkpoint holds them."""


class Li2Module(pl.LightningModule):
    """The paper's two-layer network on a group arithmetic task, full batch by default.

    M is taken from the data: from the CLI's link to ``data.M``, or in :meth:`setup` from the
    trainer's datamodule when not given. Logs ``train/loss``, ``train/acc`` (at the parameters the
    step saw), ``val/loss``, ``val/acc`` (after the step, on the held-out pairs), and
    ``train/W_norm``, ``train/V_norm`` every epoch.

    Implements the Li2 probe (:mod:`li2_lightning.probe`) and passes the hidden activations F
    through the hook point ``hook_F`` (:mod:`li2_lightning.hooks`), where the Li2 callbacks read
    F and −∂L/∂F of a full-batch step instead of recomputing them.

    Args:
        K: hidden width.
        activation: ``"sqr"``, ``"relu"``, ``"silu"`` or ``"relusqr"``.
        loss: ``"mse"`` (class-centred squared error, docs/theory.md §2) or ``"ce"``.
        M: group order; None to take it from the datamodule.
        V_init_scale: multiplier on V's initial values (0: zero-init V).
        output_scale: output multiplier β.
        hidden_layers: L ≥ 1 hidden layers (1: the paper's two-layer net); layers 2..L are K×K and
            bias-free (docs/theory.md §10).
        residual: layers 2..L compute σ(F + F U) instead of σ(F U).
        complex_weights: complex W, U, V; loss and accuracy on the real part of the output
            (needs ``activation="sqr"``).
        top_layer: ``"learned"`` (default) or ``"ridge"``: V is set to the ridge solution of the
            current features before every training step and not trained (needs ``loss="mse"``).
        ridge_lambda: the ridge η of ``top_layer="ridge"``.
        optimizer: called with ``named_parameters()``; default Adam lr 1e-3, weight decay 2e-4.
        scheduler: optional LR scheduler, called with the optimizer, stepped every epoch.
        scheduler_monitor: the logged value a ``ReduceLROnPlateau`` scheduler watches (other
            schedulers ignore it); ``"train/loss"`` when the run holds out no pairs.

    Raises:
        ValueError: on K < 1, M < 2, or an unknown activation or loss.

    The weights are checked every epoch before any checkpoint can hold them: the validation loss
    after the step, or, in an epoch without validation (``train_fraction 1``), the weights and the
    training loss at the new weights (one extra forward pass). A NaN or infinite value raises
    :class:`NonFiniteLossError`. ``setup`` refuses a run that would not fit in memory
    (:func:`li2_lightning.memory.check_fits`), and ``on_load_checkpoint`` a checkpoint trained with
    other settings (:func:`li2_lightning.checkpoint.check_compatible`).
    """

    def __init__(
        self,
        K: int = 512,
        activation: ActivationName = "sqr",
        loss: LossName = "mse",
        M: Optional[int] = None,
        V_init_scale: float = 1.0,
        output_scale: float = 1.0,
        hidden_layers: int = 1,
        residual: bool = False,
        complex_weights: bool = False,
        top_layer: TopLayerName = "learned",
        ridge_lambda: float = 1e-3,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: Optional[LRSchedulerCallable] = None,
        scheduler_monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        check_M_K(2 if M is None else M, K)
        activation_fn(activation)
        check_loss(loss)
        self.net_spec = NetSpec(activation, output_scale, hidden_layers, residual, complex_weights, top_layer,
                                ridge_lambda).check_loss(loss)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "scheduler_monitor"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_monitor = scheduler_monitor
        self._checked_epoch = -1  # the last epoch whose post-step loss was checked finite
        self.net: Optional[TwoLayerNet] = None
        self.hook_F = HookPoint()  # F (n, K): read by the Li2 callbacks
        if M is not None:
            self._build(M)

    def _build(self, M: int) -> None:
        hp = self.hparams
        check_fits(M, hp.K, 1, optimizer_slots=0)  # the parameters alone, before they are allocated
        spec = self.net_spec
        self.net = TwoLayerNet.from_spec(M, hp.K, spec, hp.V_init_scale)
        if spec.hidden_layers > 1 or spec.complex_weights or spec.top_layer == "ridge":
            rank_zero_warn(_VARIANT_DIAGNOSTICS, category=UserWarning)
        # weighted means and counts that torchmetrics syncs across ranks: exact under DDP shards
        # A NaN must show, not be dropped; nan_strategy="disable" would also drop the weights
        # (torchmetrics 1.9), so NaN is "imputed" with NaN.
        self.train_loss = MeanMetric(nan_strategy=float("nan"))
        self.val_loss = MeanMetric(nan_strategy=float("nan"))
        self.train_acc = MulticlassAccuracy(num_classes=M, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=M, average="micro")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """With ``top_layer="ridge"``: V ← the ridge solution of this batch's top features (docs/theory.md §10).

        Full batch (the paper's setting) makes it the solution on the whole training set; under
        DDP each rank would solve on its own shard, so ridge runs use one device.
        """
        if self.net is not None and self.net.top_layer == "ridge":
            self.net.fit_top_layer_(batch[0], batch[1])

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        M_data = getattr(dm, "M", None)
        if self.net is None:
            if M_data is None:
                raise ValueError("M=None: give Li2Module an M, or train it with a datamodule that has .M")
            self.hparams.M = M_data
        elif M_data is not None and M_data != self.hparams.M:
            raise ValueError(f"M={self.hparams.M} of the model does not match the data's group order {M_data}")
        if dm is not None and hasattr(dm, "n_train"):  # before the net's (2M, K) and (K, M) exist
            self.check_memory(dm, str(self.trainer.strategy.root_device), stage)
        if self.net is None:
            self._build(M_data)

    def check_memory(self, dm, device: str = "cpu", stage: str = "fit") -> None:
        """Raise at once, naming a setting that fits, if training on ``dm`` would not fit on ``device``.

        Called by :meth:`setup`, and by the CLI before it writes a run folder.

        Raises:
            ValueError: from :func:`li2_lightning.memory.check_fits`.
        """
        n_eval = len(dm.test_y)
        if stage == "predict":
            n_pred = self.hparams.M**2 if dm.predict_x is None else len(dm.predict_x)
            n_eval = max(n_eval, min(n_pred, dm.batch_size or n_pred))
        check_fits(self.hparams.M, self.hparams.K, dm.n_train, n_eval, dm.batch_size, device=device)

    def check_resume(self, checkpoint: dict[str, Any], dm=None, fitting: bool = True) -> None:
        """Refuse a checkpoint trained with other model, data or (when ``fitting``) optimizer settings.

        A setting an older checkpoint did not record is compared with its constructor default, and
        the train size is compared as the number of pairs it resolves to (``train_fraction 0.4`` and
        ``n_train 2016`` on Z71 are the same run).

        Raises:
            ValueError: naming every difference (:func:`li2_lightning.checkpoint.check_compatible`).
        """
        data_hparams = data_defaults = None
        checkpoint = dict(checkpoint)
        if dm is not None and getattr(dm, "hparams", None) is not None and hasattr(dm, "M"):
            data_defaults = _defaults(type(dm))
            data_hparams = train_size_settings(dm.hparams, dm.M)
            saved = checkpoint.get("datamodule_hyper_parameters")
            if saved is not None:
                M_saved = checkpoint.get("hyper_parameters", {}).get("M") or dm.M
                checkpoint["datamodule_hyper_parameters"] = train_size_settings(
                    {**data_defaults, **saved}, M_saved)
        optimizer = self.optimizer_factory(list(self.named_parameters())) if fitting else None
        check_compatible(checkpoint, self.hparams, data_hparams, optimizer,
                         model_defaults=_defaults(type(self)), data_defaults=data_defaults)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.optimizers:
            checkpoint["li2_optimizer"] = optimizer_signature(self.trainer.optimizers[0])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is None:  # load_from_checkpoint: the settings come from the checkpoint
            return
        self.check_resume(checkpoint, self.trainer.datamodule, fitting=self.trainer.state.fn == "fit")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, M) for index pairs x (n, 2)."""
        return self.net(x)

    def _step(self, batch):
        x, y, denom = batch
        F = self.hook_F(self.net.hidden(x))  # (b, K)
        out = self.net.readout(F)  # (b, M)
        loss = loss_sum(self.hparams.loss, out, y) / denom
        return F, out, y, loss, denom

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        F, out, y, loss, denom = self._step(batch)
        self._check_finite(loss)
        self.train_loss.update(loss.detach(), denom)
        self.train_acc.update(out.detach(), y)
        # logged from the step (Lightning computes and resets the metrics at epoch end), so every
        # callback's on_train_epoch_end already sees this epoch's values
        self.log_dict({"train/loss": self.train_loss, "train/acc": self.train_acc}, on_step=False,
                      on_epoch=True, batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        _, out, y, loss, denom = self._step(batch)
        self.val_loss.update(loss, denom)
        self.val_acc.update(out, y)

    def test_step(self, batch, batch_idx: int) -> None:
        """``test/loss`` and ``test/acc`` on the held-out pairs (the datamodule's test split)."""
        _, out, y, loss, denom = self._step(batch)
        self.val_loss.update(loss, denom)
        self.val_acc.update(out, y)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._epoch_values({"test/loss": self.val_loss, "test/acc": self.val_acc}), batch_size=1,
                      sync_dist=True)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Rows (h1, h2, predicted h1·h2), (b, 3): the argmax of the logits for each pair of the batch."""
        x = batch[0]  # (b, 2)
        return torch.cat([x, self(x).argmax(dim=1, keepdim=True)], dim=1)

    # One log_dict per loop and epoch: each logged key costs ~0.4 ms in Lightning's result
    # collection, comparable to a small model's whole step.
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_loss.reset()
            self.val_acc.reset()
            return
        values = self._epoch_values({"val/loss": self.val_loss, "val/acc": self.val_acc})
        if not math.isfinite(values["val/loss"]):  # identical on every rank: synced by torchmetrics
            # raised before ModelCheckpoint's on_validation_end, so no checkpoint holds these weights
            raise NonFiniteLossError(
                f"val/loss is {values['val/loss']} after the step of epoch {self.current_epoch}: "
                f"training stopped before these weights were checkpointed; {_NAN_ADVICE}")
        if self.trainer.state.fn == "fit":
            self._checked_epoch = self.current_epoch
        self.log_dict(values, prog_bar=True, batch_size=1, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        # ModelCheckpoint's on_train_epoch_end runs after this hook (Lightning calls the module's
        # hook before the checkpoint callbacks'), so an epoch without validation is checked here
        if self._checked_epoch != self.current_epoch:
            self._check_after_step()
        # sync_dist (here and for val/test): the values are already equal on every rank, but
        # Lightning warns under DDP without it; the all-reduce of a scalar per key is negligible
        self.log_dict({"train/W_norm": self.net.W.detach().norm(), "train/V_norm": self.net.V.detach().norm()},
                      batch_size=1, sync_dist=True)

    @torch.no_grad()
    def _check_after_step(self) -> None:
        """The weights and the training loss at the weights after this epoch's steps, checked finite."""
        loss = torch.zeros((), device=self.device)
        for batch in _as_iterable(self.trainer.train_dataloader):
            batch = tuple(t.to(self.device) for t in batch)
            loss += self._step(batch)[3]  # this rank's share: the ranks' sum is the epoch mean
        weights = torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all()
        bad = not (bool(weights) and bool(torch.isfinite(loss)))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            what = "the weights are NaN or infinite" if not bool(weights) else f"train/loss is {loss.item()}"
            raise NonFiniteLossError(
                f"{what} after the step of epoch {self.current_epoch} (checked at the new weights: no "
                f"validation ran this epoch): training stopped before these weights were checkpointed; "
                f"{_NAN_ADVICE}")

    @staticmethod
    def _epoch_values(metrics: dict) -> dict[str, float]:
        """Each metric's epoch value as a float, synced across ranks by torchmetrics."""
        values = {}
        for key, metric in metrics.items():
            values[key] = float(metric.compute())
            metric.reset()
        return values

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise NonFiniteLossError(
                f"train/loss is {loss.item()} at epoch {self.current_epoch}: training stopped before "
                f"the optimizer step; {_NAN_ADVICE}")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(list(self.named_parameters()))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            monitor = self.scheduler_monitor
            dm = self.trainer.datamodule if self._trainer is not None else None
            if monitor.startswith("val/") and dm is not None and len(getattr(dm, "test_y", [None])) == 0:
                monitor = "train/loss"  # train_fraction 1: nothing held out, no val/* values
            config["monitor"] = monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def eta_eff(self) -> Optional[float]:
        """The theory's ridge η for the top layer, from the loss and V's weight decay (docs/theory.md §2).

        With the class-centred MSE (mean over n samples) and coupled L2 decay wd, the top layer's
        fixed point is (FᵀF + (n·wd/2) I) V = Fᵀ(Y − 1/M), so η = n·wd/2 (SGD and Adam alike:
        both stop where the gradient plus wd·V vanishes). None when it is not defined: no trainer
        or optimizer yet, a cross-entropy loss, or decoupled decay (AdamW), whose fixed point is
        not a ridge solution.
        """
        if self.hparams.loss != "mse" or self._trainer is None or not self.trainer.optimizers:
            return None
        optimizer = self.trainer.optimizers[0]
        for group in optimizer.param_groups:
            if any(p is self.net.V for p in group["params"]):
                if isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False):
                    return None
                return self.trainer.datamodule.n_train * group.get("weight_decay", 0.0) / 2
        return None

    def li2_probe(self) -> Li2Probe:
        """What the Li2 callbacks read (see :mod:`li2_lightning.probe`); no side effects."""
        dm = self.trainer.datamodule
        return Li2Probe(
            M=self.hparams.M, x=dm.train_x.to(self.device), y=dm.train_y.to(self.device),
            W=self.net.W.detach(), V=self.net.V.detach(), activation=self.hparams.activation,
            loss=self.hparams.loss, group=dm.group, eta_eff=self.eta_eff(),
            output_scale=self.hparams.output_scale)


def _defaults(cls: type) -> dict[str, Any]:
    """The constructor defaults of ``cls``, to stand in for settings an older checkpoint lacks."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _as_iterable(loader):
    """The train dataloader as an iterable of batches (Lightning may keep a list of loaders)."""
    if isinstance(loader, (list, tuple)):
        return [batch for one in loader for batch in one]
    return loader
