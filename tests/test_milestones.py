import csv
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from li2_lightning.callbacks.milestones import AccuracyMilestones
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module


def test_milestones_are_the_first_epochs_in_the_logged_history(tmp_path):
    pl.seed_everything(1, verbose=False)
    dm = GroupArithmeticDataModule("Z23", train_fraction=0.6, split_seed=1)
    model = Li2Module(K=256, optimizer=lambda p: torch.optim.Adam(p, lr=5e-3, weight_decay=1e-3))
    milestones = AccuracyMilestones(metrics=["train/acc", "val/acc", "val/acc"], thresholds=[1.0, 0.3, 0.9])
    logger = CSVLogger(tmp_path, version=0)
    pl.Trainer(max_epochs=150, logger=logger, callbacks=[milestones], enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(model, dm)
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    expected = {}
    for metric, thr in milestones.pairs:
        epochs = [int(r["epoch"]) for r in rows if r.get(metric) and float(r[metric]) >= thr]
        if epochs:
            expected[AccuracyMilestones.key(metric, thr)] = min(epochs)
    assert len(expected) == 3, "the run should reach every threshold; make it longer if not"
    assert milestones.milestones == expected
    logged = {k: int(float(r[k])) for r in rows for k in expected if r.get(k)}
    assert logged == expected
    restored = AccuracyMilestones()
    restored.load_state_dict(milestones.state_dict())
    assert restored.milestones == expected


def test_mismatched_lists_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        AccuracyMilestones(metrics=["val/acc"], thresholds=[0.5, 0.9])
