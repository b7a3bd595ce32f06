"""Stage sequences of whole runs: the StageMonitor on Li2Module and on a user's own module.

The runs are slow (hundreds of epochs each) and marked so. What they check is the order of the
stages where grokking happens (independent before interactive before done) and that no
interactive or done stage is reported where it does not (weight decay 0 twins).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
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
