"""The Li2 diagnostics read back from what each logger wrote: W&B (offline run file), TensorBoard
(event files) and CSV (metrics.csv and the PNG/CSV files beside it).

One short fit on Z11 per logger, cadences chosen so that every kind of output occurs: the
monitored scalars every epoch, the detail and heavy scalars and the images every 2 epochs (and
the last), and a stage transition at epoch 0 (thresholds set so that lazy -> independent is
immediate). Each check is against what the callbacks say they logged (their ``history``) and the
step of ``val/acc`` in the same logger.
"""

import csv
import glob
import os
import time

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from li2_lightning.callbacks import EnergyMonitor, FeatureMonitor, GFStructureMonitor, StageMonitor
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module

EPOCHS = 4
DETAIL_EPOCHS = [0, 2, 3]  # every 2 epochs and the last


def _callbacks():
    return [GFStructureMonitor(detail_every_n_epochs=2, heavy_every_n_epochs=2),
            EnergyMonitor(detail_every_n_epochs=2, image_every_n_epochs=2),
            FeatureMonitor(detail_every_n_epochs=2, image_every_n_epochs=2, purity_threshold=0.5),
            StageMonitor(fit_train_acc=0.0, align_high=0.0, independence_max=10.0)]


def _fit(tmp_path, logger):
    torch.manual_seed(0)
    cbs = _callbacks()
    trainer = Trainer(max_epochs=EPOCHS, logger=logger, callbacks=cbs, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(tmp_path), accelerator="cpu")
    trainer.fit(Li2Module(K=32), GroupArithmeticDataModule("Z11", train_fraction=0.5))
    return trainer, cbs


def _expected(cbs):
    """{key: [epochs]} of every scalar the callbacks logged, from their histories."""
    out: dict[str, list[int]] = {}
    for cb in cbs:
        for h in cb.history:
            for k in h:
                if k != "epoch":
                    out.setdefault(k, []).append(int(h["epoch"]))
    return out


def _check_keys(expected):
    assert {"li2/gf/align", "li2/energy/ratio_mean", "li2/feat/coverage", "stage/index"} <= expected.keys()
    assert expected["li2/gf/align"] == list(range(EPOCHS))
    assert expected["li2/gf/uncovered_share"] == DETAIL_EPOCHS  # a detail key
    assert expected["li2/F/gram_distance"] == DETAIL_EPOCHS  # a heavy key
    assert expected["stage/independent_epoch"] == [0]


def test_wandb_read_back(tmp_path):
    from li2_lightning.wandb_offline import read_history, read_summary

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="li2-test")
    trainer, cbs = _fit(tmp_path, logger)
    logger.experiment.finish()
    expected = _expected(cbs)
    _check_keys(expected)
    for _ in range(100):  # the W&B service may still be writing the tail
        rows = read_history(str(tmp_path))
        if sum("li2/gf/align" in r for r in rows) == EPOCHS and any("stage/transitions/_type" in r for r in rows):
            break
        time.sleep(0.1)
    val_step = {int(r["epoch"]): r["trainer/global_step"] for r in rows if "val/acc" in r}
    assert sorted(val_step) == list(range(EPOCHS))
    for key, epochs in expected.items():
        assert [r["trainer/global_step"] for r in rows if key in r] == [val_step[e] for e in epochs], key
    media = {"li2/feat/irrep_power": DETAIL_EPOCHS, "li2/energy/hist": DETAIL_EPOCHS, "stage/transitions": [0]}
    for key, epochs in media.items():
        steps = [r["trainer/global_step"] for r in rows if f"{key}/_type" in r]  # media rows nest their fields
        assert steps == [val_step[e] for e in epochs], key
    summary = read_summary(str(tmp_path))
    assert summary["stage/independent_epoch"] == 0 and summary["stage/current"] == "independent"
    assert summary["val/acc"]["max"] == pytest.approx(max(r["val/acc"] for r in rows if "val/acc" in r))


def test_tensorboard_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer, cbs = _fit(tmp_path, logger)
    expected = _expected(cbs)
    _check_keys(expected)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0, "histograms": 0,
                                                          "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    val_step = [e.step for e in acc.Scalars("val/acc")]
    assert len(val_step) == EPOCHS
    for key, epochs in expected.items():
        assert [e.step for e in acc.Scalars(key)] == [val_step[e] for e in epochs], key
    for key in ("li2/feat/irrep_power",):
        imgs = acc.Images(key)
        assert [e.step for e in imgs] == [val_step[e] for e in DETAIL_EPOCHS]
        assert imgs[0].encoded_image_string[:4] == b"\x89PNG" and imgs[0].width > 100
    hist = acc.Histograms("li2/energy/hist")
    assert [e.step for e in hist] == [val_step[e] for e in DETAIL_EPOCHS]
    assert hist[0].histogram_value.num == 32  # one value per node
    text_tag = next(t for t in tags["tensors"] if t.startswith("stage/transitions"))
    (event,) = acc.Tensors(text_tag)
    assert event.step == val_step[0]
    table = event.tensor_proto.string_val[0].decode()
    assert "| epoch | from | to |" in table and "| 0 | lazy | independent |" in table


def test_csv_read_back(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer, cbs = _fit(tmp_path, logger)
    expected = _expected(cbs)
    _check_keys(expected)
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    val_step = {int(r["epoch"]): r["step"] for r in rows if r.get("val/acc")}
    assert sorted(val_step) == list(range(EPOCHS))
    for key, epochs in expected.items():
        assert [r["step"] for r in rows if r.get(key)] == [val_step[e] for e in epochs], key
    li2 = os.path.join(logger.log_dir, "li2")
    for stem in ("irrep_power", "energy_hist"):
        files = sorted(glob.glob(os.path.join(li2, f"{stem}_epoch*.png")))
        assert [int(f[-9:-4]) for f in files] == DETAIL_EPOCHS, stem
        with open(files[0], "rb") as f:
            assert f.read(4) == b"\x89PNG"
    with open(os.path.join(li2, "stages.csv")) as f:
        table = list(csv.DictReader(f))
    assert [(t["epoch"], t["from"], t["to"]) for t in table] == [("0", "lazy", "independent")]
    # the stage transition values in the table are those logged at that epoch
    row0 = next(r for r in rows if r["step"] == val_step[0] and r.get("stage/independent/a_G"))
    assert float(table[0]["a_G"]) == pytest.approx(float(row0["stage/independent/a_G"]), rel=1e-6)
