"""Li2Module: the LightningModule that trains the two-layer net on group arithmetic."""

from __future__ import annotations

from typing import Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from li2_lightning.hooks import HookPoint
from li2_lightning.losses import check_loss, loss_sum
from li2_lightning.nets import TwoLayerNet, activation_fn, check_M_K, check_variant
from li2_lightning.probe import Li2Probe


def default_optimizer(params) -> torch.optim.Optimizer:
    """Adam, lr 1e-3, coupled L2 weight decay 2e-4: the paper's Fig. 3 setting."""
    return torch.optim.Adam(params, lr=1e-3, weight_decay=2e-4)


_NAN_ADVICE = ("lower the learning rate or output_scale; the last checkpoint written holds the last "
               "weights with a finite loss (resume from it with --ckpt_path)")


# Said once per process: what the two-layer monitors mean on a model variant (docs/theory.md §10).
_VARIANT_DIAGNOSTICS = (
    "Li2Module with hidden_layers > 1, complex_weights or top_layer='ridge': the monitors of "
    "li2_lightning.callbacks read the probe's W (first layer) and V and the top hidden layer's F. For a deep "
    "net F is the top layer's, while energy, purity and coverage describe W, and the ridge/η diagnostics "
    "(r_V, G_F(∞)) assume the two-layer fixed point; with complex weights these monitors are not defined "
    "(their σ(XW) is real). Use li2_lightning.callbacks.LayerMonitor for per-layer G_l, alignment, movement, "
    "features and onset epochs (docs/theory.md §10).")


TopLayerName = Literal["learned", "ridge"]


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss is NaN or infinite; no optimizer step is taken."""


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

    Raises:
        ValueError: on K < 1, M < 2, or an unknown activation or loss.
    """

    def __init__(
        self,
        K: int = 512,
        activation: str = "sqr",
        loss: str = "mse",
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
    ) -> None:
        super().__init__()
        check_M_K(2 if M is None else M, K)
        activation_fn(activation)
        check_loss(loss)
        check_variant(activation, hidden_layers, complex_weights, top_layer, ridge_lambda, loss)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net: Optional[TwoLayerNet] = None
        self.hook_F = HookPoint()  # F (n, K): read by the Li2 callbacks
        if M is not None:
            self._build(M)

    def _build(self, M: int) -> None:
        hp = self.hparams
        variant = {k: hp.get(k, d) for k, d in (("hidden_layers", 1), ("residual", False), ("complex_weights", False),
                                                ("top_layer", "learned"), ("ridge_lambda", 1e-3))}
        self.net = TwoLayerNet(M, hp.K, hp.activation, hp.V_init_scale, hp.output_scale, **variant)
        if variant["hidden_layers"] > 1 or variant["complex_weights"] or variant["top_layer"] == "ridge":
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
            self._build(M_data)
        elif M_data is not None and M_data != self.hparams.M:
            raise ValueError(f"M={self.hparams.M} of the model does not match the data's group order {M_data}")

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

    # One log_dict per loop and epoch: each logged key costs ~0.4 ms in Lightning's result
    # collection, comparable to a small model's whole step.
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_loss.reset()
            self.val_acc.reset()
            return
        values = self._epoch_values({"val/loss": self.val_loss, "val/acc": self.val_acc})
        if not torch.isfinite(values["val/loss"]):  # identical on every rank: synced by torchmetrics
            # raised before ModelCheckpoint's on_validation_end, so no checkpoint holds these weights
            raise NonFiniteLossError(
                f"val/loss is {values['val/loss'].item()} after the step of epoch {self.current_epoch}: "
                f"training stopped before these weights were checkpointed; {_NAN_ADVICE}")
        self.log_dict(values, prog_bar=True, batch_size=1)

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/W_norm": self.net.W.detach().norm(), "train/V_norm": self.net.V.detach().norm()},
                      batch_size=1)

    @staticmethod
    def _epoch_values(metrics: dict) -> dict:
        values = {}
        for key, metric in metrics.items():
            values[key] = metric.compute()  # synced across ranks by torchmetrics
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
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "epoch"}}

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
