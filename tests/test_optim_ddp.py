"""Li2Module with Muon under Lightning DDP on CPU (gloo): ranks agree, match one process, resume exactly.

The runs go through `python train.py fit` in subprocesses: `strategy="ddp"` inside pytest would
re-launch pytest itself (ECOSYSTEM.md). The callbacks below reach the children through PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from li2_lightning.optim import Muon
from train_subprocess import train_subprocess

ROOT = Path(__file__).resolve().parents[1]


class DumpState(pl.Callback):
    """At the end of fit, save W, V and the optimizer state of this rank to ``{path}_rank{r}.pt``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"W": pl_module.net.W.detach().clone(), "V": pl_module.net.V.detach().clone(),
                    "step": trainer.global_step, "opt": trainer.optimizers[0].state_dict()},
                   f"{self.path}_rank{trainer.global_rank}.pt")


class KillAtEpoch(pl.Callback):
    """Hard-exit every rank (no teardown, no final checkpoint) when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os._exit(3)


MUON = {"class_path": "li2_lightning.optim.Muon",
        "init_args": {"lr": 0.02, "preset": "li2", "adam_lr": 0.01, "weight_decay": 1e-3}}
DATA = {"group": "Z11", "train_fraction": 0.5, "split_seed": 1}
K = 24
EPOCHS = 20  # full batch: one optimizer step per epoch


def _config(tmp: Path, devices: int, kill_at: int | None = None) -> Path:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp / "ckpt"), "save_last": True, "save_top_k": 1, "every_n_epochs": 1}},
        {"class_path": "test_optim_ddp.DumpState", "init_args": {"path": str(tmp / "final")}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "test_optim_ddp.KillAtEpoch", "init_args": {"epoch": kill_at}})
    config = {
        "seed_everything": 1,
        "trainer": {"max_epochs": EPOCHS, "accelerator": "cpu", "devices": devices,
                    "strategy": "ddp" if devices > 1 else "auto", "logger": False, "limit_val_batches": 0,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp), "callbacks": callbacks},
        "model": {"K": K, "optimizer": MUON},
        "data": DATA,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.in.yaml").write_text(yaml.safe_dump(config))
    return tmp / "config.in.yaml"


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _load(tmp: Path, rank: int) -> dict:
    return torch.load(tmp / f"final_rank{rank}.pt", weights_only=True)


# three 2-rank train.py runs: ~20 s on an idle 2-core machine, ~55 s under load; in the default run
def test_li2module_muon_ddp_matches_single_process_and_resumes():
    """Li2Module + Muon (li2) on Z11, two gloo ranks, 20 full-batch steps:

    - both ranks end with identical W, V and optimizer state;
    - W and V equal a single-process run to float tolerance;
    - a run hard-killed when epoch 10 starts, resumed from rank zero's last.ckpt, ends at step 20
      bit-identical to the uninterrupted DDP run.
    """
    # not pytest's tmp_path: other pytest sessions on the machine prune old basetemp folders
    # while these minute-long runs still write to them
    with tempfile.TemporaryDirectory(prefix="li2_muon_ddp_") as tmp:
        _ddp_matches_single_process_and_resumes(Path(tmp))


def _ddp_matches_single_process_and_resumes(tmp_path: Path) -> None:
    from lightning.pytorch import Trainer, seed_everything

    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    full, killed = tmp_path / "ddp", tmp_path / "killed"
    procs = [train_subprocess(_config(full, 2)), train_subprocess(_config(killed, 2, kill_at=10))]

    # meanwhile, the single-process reference in this process
    seed_everything(1)
    dm = GroupArithmeticDataModule(**DATA)
    model = Li2Module(K=K, M=dm.M, optimizer=lambda p: Muon(p, **MUON["init_args"]))
    Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path / "single").fit(model, dm)
    single = {"W": model.net.W.detach(), "V": model.net.V.detach()}

    (rc_full, out_full), (rc_killed, out_killed) = map(_finish, procs)
    assert rc_full == 0, out_full[-3000:]
    assert rc_killed != 0 and (killed / "ckpt" / "last.ckpt").exists(), out_killed[-3000:]
    assert not (killed / "final_rank0.pt").exists()  # it really died before the end
    assert torch.load(killed / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 10

    rc, out = _finish(train_subprocess(_config(killed, 2), "--ckpt_path", str(killed / "ckpt" / "last.ckpt")))
    assert rc == 0, out[-3000:]

    ranks = [_load(full, 0), _load(full, 1)]
    assert ranks[0]["step"] == EPOCHS
    for key in ("W", "V"):
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs across ranks"
        diff = (ranks[0][key] - single[key]).abs().max().item()
        print(f"max |DDP - single process| on {key} after {EPOCHS} steps: {diff:.2e}")
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-4, atol=1e-5)
    state0, state1 = ranks[0]["opt"]["state"], ranks[1]["opt"]["state"]
    assert state0.keys() == state1.keys() == {0, 1}  # W's momentum buffer, V's Adam moments
    for i in state0:
        assert all(torch.equal(state0[i][k], state1[i][k]) for k in state0[i]), f"optimizer state {i}"

    resumed = [_load(killed, 0), _load(killed, 1)]
    for key in ("W", "V"):
        assert torch.equal(resumed[0][key], ranks[0][key]), f"resumed {key} differs from uninterrupted"
        assert torch.equal(resumed[1][key], ranks[0][key])
    for i in state0:
        assert all(torch.equal(resumed[0]["opt"]["state"][i][k], state0[i][k]) for k in state0[i])
