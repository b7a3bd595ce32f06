"""Stage sequences of whole runs: the StageMonitor on Li2Module and on a user's own module.

The runs are slow (hundreds of epochs each) and marked so. What they check is the order of the
stages where grokking happens (independent before interactive before done) and that no
interactive or done stage is reported where it does not (weight decay 0 twins).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader

from li2_lightning.callbacks import StageMonitor
from li2_lightning.hooks import HookPoint
from li2_lightning.probe import Li2Probe


class UserNet(LightningModule):
    """A user's module as docs/callbacks.md describes it: own parameters, cross-entropy, own data.

    x² two-layer net on Z_M addition, full batch, validation on the held-out pairs.
    """

    def __init__(self, M: int = 23, K: int = 256, train_fraction: float = 0.5, optimizer: str = "adamw",
                 lr: float = 1e-3, weight_decay: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.M, self.opt, self.lr, self.wd = M, optimizer, lr, weight_decay
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(2 * M, K, generator=g) / (2 * M) ** 0.5)
        self.V = nn.Parameter(torch.randn(K, M, generator=g) / K)
        self.hook_F = HookPoint()
        perm = torch.randperm(M * M, generator=g)
        pairs = torch.stack([perm // M, perm % M], 1)  # (M², 2)
        n = int(train_fraction * M * M)
        self.x, self.x_val = pairs[:n], pairs[n:]
        self.y, self.y_val = self.x.sum(1) % M, self.x_val.sum(1) % M

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.square(self.W[x[:, 0]] + self.W[self.M + x[:, 1]])  # (n, K)
        if self.training:
            F = self.hook_F(F)
        return F @ self.V

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.logits(x)
        self.log_dict({"train/acc": (out.argmax(1) == y).float().mean()}, on_step=False, on_epoch=True)
        return nn.functional.cross_entropy(out, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.logits(x).argmax(1) == y).float().mean())

    def train_dataloader(self):
        return DataLoader([(self.x, self.y)], batch_size=None)

    def val_dataloader(self):
        return DataLoader([(self.x_val, self.y_val)], batch_size=None)

    def configure_optimizers(self):
        if self.opt == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.wd)
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.wd)
        if self.opt == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.wd)
        return torch.optim.Muon(self.parameters(), lr=self.lr, weight_decay=self.wd)

    def li2_probe(self) -> Li2Probe:
        return Li2Probe(M=self.M, x=self.x, y=self.y, W=self.W.detach(), V=self.V.detach(), activation="sqr",
                        loss="ce")


def _stages(model, epochs, datamodule=None, **monitor_kw):
    """Fit with only a StageMonitor attached; returns the monitor and the epochs' val/acc."""
    accs: list[float] = []

    class ValAcc(Callback):  # records val/acc per epoch
        def on_train_epoch_end(self, trainer, pl_module):
            accs.append(float(trainer.callback_metrics.get("val/acc", float("nan"))))

    monitor = StageMonitor(**monitor_kw)
    trainer = Trainer(max_epochs=epochs, logger=False, callbacks=[monitor, ValAcc()], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      accelerator="cpu")
    trainer.fit(model, datamodule=datamodule)
    return monitor, accs


def _sequence(monitor):
    return [(t["to"], t["epoch"]) for t in monitor.transitions]


def _first(accs, level):
    return next((e for e, a in enumerate(accs) if a >= level), None)


def _li2module(optimizer, wd, lr, group="Z23", K=256, n_train=317, **opt_kw):
    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    seed_everything(1)
    model = Li2Module(K=K, optimizer=lambda p: optimizer(p, lr=lr, weight_decay=wd, **opt_kw))
    return model, GroupArithmeticDataModule(group, n_train=n_train, split_seed=1)


@pytest.mark.slow
def test_cross_entropy_adamw_on_a_user_module_goes_independent_interactive_done(caplog):
    """Z23, K 512, p 0.8, AdamW lr 3e-3 wd 1: a_G stays ~0.8-0.9 throughout; independent ~29,
    interactive ~95 (test acc 0.15), done when test acc reaches 0.99 (~226, coverage 0.7)."""
    seed_everything(1)
    with caplog.at_level("INFO"):
        monitor, accs = _stages(UserNet(K=512, train_fraction=0.8, lr=3e-3, weight_decay=1.0), 400)
    assert sum("StageMonitor: the loss is 'ce'" in r.getMessage() for r in caplog.records) == 1
    seq = _sequence(monitor)
    print("CE AdamW wd 1:", seq, "val>=0.5 at", _first(accs, 0.5), ">=0.99 at", _first(accs, 0.99))
    assert [s for s, _ in seq] == ["independent", "interactive", "done"]
    assert seq[1][1] < _first(accs, 0.5)  # interactive before grokking
    assert seq[2][1] == _first(accs, 0.99)  # done when the test set is solved
    assert all(t["a_G"] > 0.7 for t in monitor.transitions)  # a_G never fell


@pytest.mark.slow
def test_cross_entropy_adamw_without_weight_decay_stalls_without_interactive_stage():
    seed_everything(1)
    monitor, accs = _stages(UserNet(K=512, train_fraction=0.8, lr=3e-3, weight_decay=0.0), 600)
    seq = _sequence(monitor)
    print("CE AdamW wd 0:", seq, "max val acc", max(accs))
    assert max(accs) < 0.5  # no grokking
    assert "interactive" not in [s for s, _ in seq] and "done" not in [s for s, _ in seq]
    assert seq[0][0] == "independent" and monitor.stage.label == "stalled"


@pytest.mark.slow
def test_sgd_mse_groks_in_order_and_its_weight_decay_0_twin_stalls():
    model, dm = _li2module(torch.optim.SGD, 1e-3, 0.3, momentum=0.9)
    monitor, accs = _stages(model, 1500, dm)
    seq = _sequence(monitor)
    print("MSE SGD wd 1e-3:", seq, "val>=0.99 at", _first(accs, 0.99))
    assert [s for s, _ in seq] == ["independent", "interactive", "done"]
    assert seq[1][1] < _first(accs, 0.5) and seq[2][1] >= _first(accs, 0.99)

    model, dm = _li2module(torch.optim.SGD, 0.0, 0.3, momentum=0.9)
    monitor, accs = _stages(model, 1500, dm)
    seq = _sequence(monitor)
    print("MSE SGD wd 0:", seq, "max val acc", max(accs))
    assert max(accs) < 0.5 and [s for s, _ in seq] == ["independent", "stalled"]


@pytest.mark.slow
def test_fig3_stages_with_and_without_weight_decay():
    """Fig. 3 (Z71, K 2048, n 2016, MSE, Adam lr 1e-3, coupled L2): independent ~17, interactive ~80,
    done ~190; with weight decay 0: stalled ~97 and no interactive stage."""
    model, dm = _li2module(torch.optim.Adam, 2e-4, 1e-3, group="Z71", K=2048, n_train=2016)
    seq = _sequence(_stages(model, 300, dm)[0])
    print("Fig. 3 wd 2e-4:", seq)
    assert [s for s, _ in seq] == ["independent", "interactive", "done"]
    assert abs(seq[0][1] - 17) <= 5 and abs(seq[1][1] - 80) <= 10 and abs(seq[2][1] - 190) <= 20

    model, dm = _li2module(torch.optim.Adam, 0.0, 1e-3, group="Z71", K=2048, n_train=2016)
    seq = _sequence(_stages(model, 300, dm)[0])
    print("Fig. 3 wd 0:", seq)
    assert [s for s, _ in seq] == ["independent", "stalled"] and abs(seq[1][1] - 97) <= 10


@pytest.mark.slow
def test_mse_with_decoupled_decay_uses_the_feature_signals():
    """AdamW (decoupled) on the MSE: a_G falls to ~0 as with wd 0, but the run keeps learning; the
    feature signals call it interactive (test acc off chance), not stalled. Its wd-0 twin stalls."""
    model, dm = _li2module(torch.optim.AdamW, 0.1, 5e-3)
    monitor, accs = _stages(model, 1000, dm)
    seq = _sequence(monitor)
    print("MSE AdamW wd 0.1:", seq, "max val acc", max(accs))
    assert [s for s, _ in seq] == ["independent", "interactive"] and monitor._a_G_signal is False

    model, dm = _li2module(torch.optim.AdamW, 0.0, 5e-3)
    monitor, accs = _stages(model, 400, dm)
    seq = _sequence(monitor)
    print("MSE AdamW wd 0:", seq, "max val acc", max(accs))
    assert [s for s, _ in seq] == ["independent", "stalled"] and monitor._a_G_signal is True


@pytest.mark.slow
def test_cross_entropy_muon_in_order_and_its_weight_decay_0_twin_stalls():
    seed_everything(1)
    monitor, accs = _stages(UserNet(train_fraction=0.7, optimizer="muon", lr=0.02, weight_decay=0.1), 1000)
    seq = _sequence(monitor)
    print("CE Muon wd 0.1:", seq, "val>=0.5 at", _first(accs, 0.5))
    assert [s for s, _ in seq] == ["independent", "interactive"] and seq[1][1] < _first(accs, 0.5)

    seed_everything(1)
    monitor, accs = _stages(UserNet(train_fraction=0.7, optimizer="muon", lr=0.02, weight_decay=0.0), 500)
    seq = _sequence(monitor)
    print("CE Muon wd 0:", seq, "max val acc", max(accs))
    assert max(accs) < 0.1 and [s for s, _ in seq] == ["independent", "stalled"]
