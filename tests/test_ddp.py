"""Li2Module with Adam under DDP on CPU (gloo, ddp_spawn in-process): the full-batch gradient is
exact, so 2 ranks end identical to each other and to one process, metrics included."""

import lightning.pytorch as pl
import pytest
import torch

from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module


def adam(params):
    return torch.optim.Adam(params, lr=3e-3, weight_decay=1e-3)


class SaveRank(pl.Callback):
    def __init__(self, path):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        torch.save({"params": {k: v.detach().clone() for k, v in pl_module.named_parameters()},
                    "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}},
                   f"{self.path}_{trainer.global_rank}.pt")


def _fit(tmp_path, tag, **trainer_kwargs):
    pl.seed_everything(3, verbose=False)
    dm = GroupArithmeticDataModule("Z11", n_train=61, split_seed=1)  # 61 rows: uneven shards
    model = Li2Module(K=24, optimizer=adam)
    trainer = pl.Trainer(max_epochs=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[SaveRank(str(tmp_path / tag))], **trainer_kwargs)
    trainer.fit(model, dm)


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    _fit(tmp_path, "single", devices=1)
    _fit(tmp_path, "ddp", devices=2, strategy="ddp_spawn")
    single = torch.load(tmp_path / "single_0.pt")
    rank0, rank1 = torch.load(tmp_path / "ddp_0.pt"), torch.load(tmp_path / "ddp_1.pt")
    for name, p in single["params"].items():
        assert torch.equal(rank0["params"][name], rank1["params"][name])
        torch.testing.assert_close(rank0["params"][name], p, rtol=1e-5, atol=1e-6)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert rank0["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-5)
        assert rank1["metrics"][key] == rank0["metrics"][key]
