import csv
import time
import glob
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.losses import loss_sum
from li2_lightning.module import Li2Module, NonFiniteLossError


def _trainer(tmp_path, epochs, **kwargs):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                      **kwargs)


def _csv_rows(logger):
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_logged_metrics_match_a_direct_evaluation(tmp_path):
    dm = GroupArithmeticDataModule("Z7", train_fraction=0.6, split_seed=0)
    torch.manual_seed(0)
    model = Li2Module(K=16, M=7)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logger = CSVLogger(tmp_path)
    _trainer(tmp_path, 1, logger=logger).fit(model, dm)
    row = {k: float(v) for r in _csv_rows(logger) for k, v in r.items() if v != ""}
    # train/* are taken at the parameters the step saw, val/* after the step
    fresh = Li2Module(K=16, M=7)
    fresh.load_state_dict(start)
    with torch.no_grad():
        out = fresh(dm.train_x)
        assert row["train/loss"] == pytest.approx(loss_sum("mse", out, dm.train_y).item() / len(dm.train_y), rel=1e-5)
        assert row["train/acc"] == pytest.approx((out.argmax(1) == dm.train_y).float().mean().item())
        out_t = model(dm.test_x)
        assert row["val/loss"] == pytest.approx(loss_sum("mse", out_t, dm.test_y).item() / len(dm.test_y), rel=1e-5)
        assert row["val/acc"] == pytest.approx((out_t.argmax(1) == dm.test_y).float().mean().item())
        assert row["train/W_norm"] == pytest.approx(model.net.W.norm().item(), rel=1e-6)
        assert row["train/V_norm"] == pytest.approx(model.net.V.norm().item(), rel=1e-6)


def test_M_is_taken_from_the_datamodule_and_checked():
    dm = GroupArithmeticDataModule("D5", train_fraction=0.5)
    model = Li2Module(K=8)
    _trainer(None, 1, logger=False, enable_checkpointing=False).fit(model, dm)
    assert model.hparams.M == 10 and model.net.V.shape == (8, 10)
    with pytest.raises(ValueError, match="M=7 of the model does not match the data's group order 10"):
        _trainer(None, 1, logger=False, enable_checkpointing=False).fit(Li2Module(K=8, M=7), dm)


@pytest.mark.parametrize("kwargs, match", [
    ({"K": 0}, "K=0"), ({"M": 1}, "M=1"), ({"activation": "gelu"}, "activation='gelu'"),
    ({"loss": "l1"}, r"loss='l1'.*\['mse', 'ce'\]"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Li2Module(**kwargs)


def test_hook_point_gives_F_and_minus_G_F_of_the_full_loss():
    dm = GroupArithmeticDataModule("Z11", train_fraction=0.5)
    torch.manual_seed(1)
    model = Li2Module(K=12, loss="ce", optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    assert "hook_F" not in "".join(model.state_dict())  # a hook point holds no state
    with model.hook_F.capture() as cap:
        _trainer(None, 1, logger=False, enable_checkpointing=False).fit(model, dm)
    assert cap.calls == 1  # the validation pass (no grad) is not captured
    F = model.net.hidden(dm.train_x).detach().requires_grad_(True)
    loss = loss_sum("ce", model.net.readout(F), dm.train_y) / len(dm.train_y)
    (grad,) = torch.autograd.grad(loss, F)
    torch.testing.assert_close(cap.value, F.detach())
    torch.testing.assert_close(cap.grad, grad)
    assert not model.hook_F._captures  # detached at the end of the block
    assert model.li2_probe().eta_eff is None  # defined for the MSE loss only


def test_eta_eff_follows_the_loss_and_weight_decay():
    dm = GroupArithmeticDataModule("Z11", n_train=60)
    model = Li2Module(K=8, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=2e-4))
    _trainer(None, 1, logger=False, enable_checkpointing=False).fit(model, dm)
    assert model.eta_eff() == pytest.approx(60 * 2e-4 / 2)


def test_resume_from_checkpoint_reaches_the_same_epoch_20(tmp_path):
    def run(epochs, root, ckpt_path=None, every=None):
        pl.seed_everything(5, verbose=False)
        dm = GroupArithmeticDataModule("Z13", train_fraction=0.5, split_seed=2)
        model = Li2Module(K=32, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-3))
        logger = CSVLogger(root, version=0)
        cbs = [ModelCheckpoint(dirpath=root / "ckpt", every_n_epochs=every, save_top_k=-1)] if every else []
        trainer = _trainer(root, epochs, logger=logger, callbacks=cbs, enable_checkpointing=bool(every))
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        return model, trainer, _csv_rows(logger)

    full, _, full_rows = run(20, tmp_path / "full")
    _, _, _ = run(10, tmp_path / "part", every=10)
    [ckpt] = glob.glob(str(tmp_path / "part" / "ckpt" / "*.ckpt"))
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed, trainer, rows = run(20, tmp_path / "resumed", ckpt_path=ckpt)
    assert trainer.current_epoch == 20
    for name, p in full.named_parameters():
        torch.testing.assert_close(dict(resumed.named_parameters())[name], p, rtol=1e-6, atol=1e-7)
    last = lambda rs, key: [float(r[key]) for r in rs if r.get(key)][-1]  # noqa: E731
    for key in ("val/acc", "val/loss", "train/loss", "train/W_norm"):
        assert last(rows, key) == pytest.approx(last(full_rows, key), rel=1e-5)
    # the optimizer state came along: Adam's step count is 20, not 10
    state = trainer.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 20 for s in state.values())


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    dm = GroupArithmeticDataModule("Z7", train_fraction=0.6)
    torch.manual_seed(0)
    model = Li2Module(K=16, optimizer=lambda p: torch.optim.SGD(p, lr=1e4))
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1)
    trainer = _trainer(tmp_path, 50, logger=False, callbacks=[ckpt])
    with pytest.raises(NonFiniteLossError, match=r"(train|val)/loss is (nan|inf)"):
        trainer.fit(model, dm)
    failed_at = trainer.current_epoch
    assert failed_at >= 1
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["epoch"] == failed_at - 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    restored = Li2Module.load_from_checkpoint(tmp_path / "last.ckpt")
    loss = loss_sum("mse", restored(dm.train_x), dm.train_y)
    assert torch.isfinite(loss)


def test_nan_in_the_training_step_stops_before_the_optimizer_step(tmp_path):
    dm = GroupArithmeticDataModule("Z7", train_fraction=0.6)
    model = Li2Module(K=4, M=7)
    with torch.no_grad():
        model.net.V[0, 0] = float("nan")
    trainer = _trainer(tmp_path, 3, logger=False, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    with pytest.raises(NonFiniteLossError, match="train/loss is nan at epoch 0: training stopped before the optimizer step"):
        trainer.fit(model, dm)
    assert not list(tmp_path.glob("*.ckpt"))


def test_eta_eff_is_undefined_for_decoupled_decay():
    dm = GroupArithmeticDataModule("Z11", n_train=60)
    model = Li2Module(K=8, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=2e-4))
    _trainer(None, 1, logger=False, enable_checkpointing=False).fit(model, dm)
    assert model.eta_eff() is None


def test_minibatches_take_one_step_per_batch_and_log_the_epoch_mean(tmp_path):
    dm = GroupArithmeticDataModule("Z7", n_train=40, batch_size=16)
    torch.manual_seed(0)
    model = Li2Module(K=8, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))  # frozen: every batch sees the same net
    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, 2, logger=logger, enable_checkpointing=False)
    trainer.fit(model, dm)
    assert trainer.global_step == 2 * 3  # ⌈40 / 16⌉ steps an epoch
    row = [r for r in _csv_rows(logger) if r.get("train/loss")][-1]
    with torch.no_grad():
        full = loss_sum("mse", model(dm.train_x), dm.train_y).item() / 40
    assert float(row["train/loss"]) == pytest.approx(full, rel=1e-5)


def test_diverging_sgd_without_validation_stops_before_a_checkpoint_holds_it(tmp_path):
    """train_fraction 1 (no val loop): the loss at the new weights is checked before last.ckpt is written."""
    dm = GroupArithmeticDataModule("Z7", train_fraction=1.0)
    assert len(dm.test_y) == 0
    torch.manual_seed(0)
    model = Li2Module(K=16, optimizer=lambda p: torch.optim.SGD(p, lr=30.0))
    trainer = _trainer(tmp_path, 50, logger=False,
                       callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1)])
    with pytest.raises(NonFiniteLossError, match=r"train/loss is (nan|inf) after the step of epoch \d+ "
                                                  r"\(checked at the new weights") as err:
        trainer.fit(model, dm)
    failed_at = trainer.current_epoch
    assert failed_at >= 1
    # the message is true: the weights in memory give a non-finite loss ...
    with torch.no_grad():
        assert not torch.isfinite(loss_sum("mse", model(dm.train_x), dm.train_y))
    # ... and the last checkpoint holds the previous epoch's weights, finite with a finite loss
    assert "every checkpoint written so far holds finite weights" in str(err.value)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["epoch"] == failed_at - 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    restored = Li2Module.load_from_checkpoint(tmp_path / "last.ckpt")
    with torch.no_grad():
        assert torch.isfinite(loss_sum("mse", restored(dm.train_x), dm.train_y))


def test_a_run_too_large_for_memory_is_refused_before_the_net_is_allocated():
    dm = GroupArithmeticDataModule("Z31", train_fraction=0.5)
    model = Li2Module(K=10**9)  # W alone would be 248 GB
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"M=31, K=1000000000, .* needs about [\d.]+ GB .*set K=\d+ \(the largest"):
        _trainer(None, 1, logger=False, enable_checkpointing=False).fit(model, dm)
    assert time.perf_counter() - t0 < 5 and model.net is None
    with pytest.raises(ValueError, match="needs about"):
        Li2Module(K=10**9, M=31)  # M known: refused in the constructor


def test_checkpoint_records_the_optimizer_and_a_resume_with_other_settings_is_refused(tmp_path):
    from li2_lightning.optim import Muon

    dm = GroupArithmeticDataModule("Z14", train_fraction=0.5)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, 2, logger=False, callbacks=[ckpt]).fit(Li2Module(K=6), dm)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["li2_optimizer"]["class"] == "Adam" and saved["li2_optimizer"]["use_muon"] == [False]

    def resume(model, data):
        _trainer(tmp_path, 3, logger=False, enable_checkpointing=False).fit(model, data, ckpt_path=tmp_path / "last.ckpt")

    cases = [
        (Li2Module(K=8), dm, "model K: checkpoint 6, config 8"),
        (Li2Module(K=6, activation="relu"), dm, "model activation: checkpoint 'sqr', config 'relu'"),
        (Li2Module(K=6, loss="ce"), dm, "model loss: checkpoint 'mse', config 'ce'"),
        (Li2Module(K=6), GroupArithmeticDataModule("D7", train_fraction=0.5), "data group: checkpoint 'Z14', config 'D7'"),
        (Li2Module(K=6, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)), dm, "optimizer class: checkpoint 'Adam', config 'SGD'"),
        (Li2Module(K=6, optimizer=lambda p: Muon(p, lr=0.02)), dm, r"use_muon: checkpoint \[False\], config \[True, False\]"),
    ]
    for model, data, match in cases:
        with pytest.raises(ValueError, match=match):
            resume(model, data)
    # the same size given as n_train instead of train_fraction is the same run
    same = GroupArithmeticDataModule("Z14", n_train=dm.n_train)
    resume(Li2Module(K=6), same)


def test_activation_and_loss_types_list_the_registries():
    from typing import get_args

    from li2_lightning.functional.model import ACTIVATIONS, LOSSES
    from li2_lightning.module import ActivationName, LossName

    assert sorted(get_args(ActivationName)) == sorted(ACTIVATIONS)
    assert sorted(get_args(LossName)) == sorted(LOSSES)
