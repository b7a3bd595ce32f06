"""The Li2 callbacks under DDP on CPU (gloo): every rank computes the same numbers and stages.

Runs go through `python train.py fit` in subprocesses (``strategy="ddp"`` inside pytest would
re-launch pytest); the dump callback below reaches the children through PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from train_subprocess import train_subprocess

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 120


class DumpLi2(pl.Callback):
    """At the end of fit, write this rank's Li2 callback histories to ``{path}_rank{r}.json``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        from li2_lightning.callbacks import FeatureMonitor, GFStructureMonitor, StageMonitor

        out = {}
        for cb in trainer.callbacks:
            if isinstance(cb, (GFStructureMonitor, FeatureMonitor)):
                out[type(cb).__name__] = cb.history
            if isinstance(cb, StageMonitor):
                out["stages"] = [[t["to"], t["epoch"]] for t in cb.transitions]
        Path(f"{self.path}_rank{trainer.global_rank}.json").write_text(json.dumps(out))


def _config(tmp: Path, devices: int) -> Path:
    li2 = yaml.safe_load((ROOT / "callbacks" / "li2.yaml").read_text())["trainer"]["callbacks+"]
    for cb in li2:  # no images; heavy observables every 20 epochs
        cb.setdefault("init_args", {}).update(
            {"image_every_n_epochs": 0} if "Energy" in cb["class_path"] or "Feature" in cb["class_path"] else {})
        if "GFStructure" in cb["class_path"]:
            cb["init_args"]["heavy_every_n_epochs"] = 20
    config = {
        "seed_everything": 1,
        "trainer": {"max_epochs": EPOCHS, "accelerator": "cpu", "devices": devices,
                    "strategy": "ddp" if devices > 1 else "auto", "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
                    "num_sanity_val_steps": 0, "default_root_dir": str(tmp),
                    "callbacks": li2 + [{"class_path": "test_callbacks_ddp.DumpLi2",
                                         "init_args": {"path": str(tmp / "li2")}}]},
        "model": {"K": 256, "optimizer": {"class_path": "torch.optim.Adam",
                                          "init_args": {"lr": 5e-3, "weight_decay": 2e-3}}},
        "data": {"group": "Z23", "train_fraction": 0.6, "split_seed": 1},
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp / "config.yaml"


def test_ddp_ranks_agree_and_match_one_process(tmp_path):
    procs = [train_subprocess(_config(tmp_path / "one", 1)), train_subprocess(_config(tmp_path / "ddp", 2))]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    one = json.loads((tmp_path / "one" / "li2_rank0.json").read_text())
    r0 = json.loads((tmp_path / "ddp" / "li2_rank0.json").read_text())
    r1 = json.loads((tmp_path / "ddp" / "li2_rank1.json").read_text())
    assert r0 == r1  # same numbers on both ranks (recomputed from the full training set)
    assert [s[0] for s in r0["stages"]] == ["independent", "interactive", "done"]
    assert [s[0] for s in one["stages"]] == [s[0] for s in r0["stages"]]
    # the DDP trajectory equals the single-process one up to the reduction's rounding
    a1 = [h["li2/gf/align"] for h in one["GFStructureMonitor"][:30]]
    a2 = [h["li2/gf/align"] for h in r0["GFStructureMonitor"][:30]]
    assert a1 == pytest.approx(a2, abs=1e-3)
