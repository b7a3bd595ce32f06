"""validate / test / predict through the Trainer and the CLI, the LR-on-plateau scheduler, the
train-size flags, checkpoint and memory refusals before any run folder, and W&B resume offline."""

import csv
import glob
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import wandb
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from li2_lightning.cli import run_cli
from li2_lightning.data import GroupArithmeticDataModule, n_train_for
from li2_lightning.losses import loss_sum
from li2_lightning.module import Li2Module
from li2_lightning.wandb_offline import iter_records, read_history

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.yaml")
QUICK = ["--config", DEFAULT, "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--model.K", "16"]


def finished_history(run: str, timeout: float = 30.0) -> list[dict]:
    """The history of an offline W&B run once its file holds the exit record.

    ``wandb.finish()`` returns before W&B's service process has always written the file's tail
    (seen on a loaded machine: a run read back with no rows), so wait for the last record.
    """
    deadline = time.monotonic() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in iter_records(run)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the W&B run {run} has no exit record after {timeout} s")
        time.sleep(0.2)
    return read_history(run)


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["li2"])  # LightningCLI also looks at sys.argv
    monkeypatch.setenv("LI2_RUNS_DIR", str(tmp_path / "runs"))


def _trainer(epochs=1, **kwargs):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def _direct(model, x, y):
    """Mean class-centred MSE and accuracy of ``model`` on pairs x, written out without the module's step."""
    with torch.no_grad():
        out = model.net.readout(model.net.hidden(x))
        return (loss_sum("mse", out, y) / len(y)).item(), (out.argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A checkpoint of configs/default.yaml (K 16, 3 epochs) written by the CLI."""
    root = tmp_path_factory.mktemp("fitted")
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["li2"])
    mp.setenv("LI2_RUNS_DIR", str(root))
    try:
        cli = run_cli(["fit", *QUICK, "--trainer.max_epochs", "3"])
    finally:
        mp.undo()
    return cli.run_dir / "checkpoints" / "last.ckpt"


# --- through the Trainer ---------------------------------------------------------------------


def test_test_step_logs_the_held_out_loss_and_accuracy():
    dm = GroupArithmeticDataModule("Z11", train_fraction=0.5)
    torch.manual_seed(0)
    model = Li2Module(K=8, M=11)
    [metrics] = _trainer(logger=False).test(model, dm)
    loss, acc = _direct(model, dm.test_x, dm.test_y)
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["test/acc"] == pytest.approx(acc)


@pytest.mark.parametrize("batch_size", [None, 7])
def test_predict_returns_the_argmax_for_every_pair_in_order(batch_size):
    dm = GroupArithmeticDataModule("D5", train_fraction=0.5, batch_size=batch_size)
    torch.manual_seed(0)
    model = Li2Module(K=8, M=10)
    rows = torch.cat(_trainer(logger=False).predict(model, dm))
    x = torch.tensor([[a, b] for a in range(10) for b in range(10)])
    with torch.no_grad():
        expected = torch.stack([model.net.readout(model.net.hidden(x[i : i + 1]))[0].argmax() for i in range(100)])
    assert torch.equal(rows[:, :2], x) and torch.equal(rows[:, 2], expected)


def test_predict_pairs_are_answered_and_checked():
    dm = GroupArithmeticDataModule("Z7", predict_pairs=[[1, 2], [6, 6]])
    model = Li2Module(K=4, M=7)
    [rows] = _trainer(logger=False).predict(model, dm)
    assert rows[:, :2].tolist() == [[1, 2], [6, 6]]
    with pytest.raises(ValueError, match=r"predict_pairs=\[\[1, 7\]\] is not accepted; accepted: pairs \[h1, h2\] of elements 0..6"):
        GroupArithmeticDataModule("Z7", predict_pairs=[[1, 7]])


def test_reduce_lr_on_plateau_follows_the_monitored_loss(tmp_path):
    """The LR each epoch equals a replay of torch's ReduceLROnPlateau on the logged val/loss."""
    dm = GroupArithmeticDataModule("Z7", train_fraction=0.6)
    torch.manual_seed(0)
    sched = dict(mode="min", factor=0.5, patience=0, threshold=0.0)
    model = Li2Module(K=8, optimizer=lambda p: torch.optim.SGD(p, lr=2.0),
                      scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **sched))
    logger = CSVLogger(tmp_path)
    _trainer(12, logger=logger, enable_checkpointing=False, callbacks=[LearningRateMonitor("epoch")],
             log_every_n_steps=1).fit(model, dm)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    lrs = [float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")]
    assert len(val) == 12 and len(lrs) == 12
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1)], lr=2.0), **sched)
    expected = []
    for v in val:
        expected.append(replay.optimizer.param_groups[0]["lr"])  # the lr the epoch trained with
        replay.step(v)
    assert lrs == pytest.approx(expected)
    assert min(expected) < 2.0  # the loss plateaued or rose at least once: the test saw a reduction


# --- through the CLI -------------------------------------------------------------------------


def test_validate_test_and_predict_from_a_checkpoint(fitted, tmp_path):
    model = Li2Module.load_from_checkpoint(fitted)
    dm = GroupArithmeticDataModule("Z31", train_fraction=0.5, split_seed=1)  # configs/default.yaml's split
    loss, acc = _direct(model, dm.test_x, dm.test_y)

    val = run_cli(["validate", *QUICK, "--ckpt_path", str(fitted)])
    assert float(val.trainer.callback_metrics["val/loss"]) == pytest.approx(loss, rel=1e-5)
    test = run_cli(["test", *QUICK, "--ckpt_path", str(fitted)])
    assert float(test.trainer.callback_metrics["test/loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(test.trainer.callback_metrics["test/acc"]) == pytest.approx(acc)

    pred = run_cli(["predict", *QUICK, "--ckpt_path", str(fitted)])
    with open(pred.run_dir / "predictions.csv") as f:
        rows = [[int(v) for v in r.values()] for r in csv.DictReader(f)]
    x = torch.tensor([[a, b] for a in range(31) for b in range(31)])
    with torch.no_grad():
        expected = model(x).argmax(1)
    assert torch.equal(torch.tensor(rows), torch.cat([x, expected[:, None]], 1))

    some = run_cli(["predict", *QUICK, "--ckpt_path", str(fitted), "--data.predict_pairs", "[[3, 4], [30, 0]]"])
    with open(some.run_dir / "predictions.csv") as f:
        rows = [[int(v) for v in r.values()] for r in csv.DictReader(f)]
    assert rows == [[3, 4, int(expected[3 * 31 + 4])], [30, 0, int(expected[30 * 31])]]


@pytest.mark.parametrize("content, match", [
    (b"", "is an empty file"),
    (b"no zip here\n", "is not a checkpoint"),
    ("half", "is truncated"),
])
def test_a_bad_ckpt_path_fails_naming_the_file_and_writes_no_run_folder(fitted, tmp_path, content, match):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(fitted.read_bytes()[:2000] if content == "half" else content)
    with pytest.raises(ValueError, match=match) as err:
        run_cli(["fit", *QUICK, "--ckpt_path", str(bad)])
    assert f"checkpoint '{bad}'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, match", [
    (["--model.K", "8"], "model K: checkpoint 16, config 8"),
    (["--model.activation", "relu"], "model activation: checkpoint 'sqr', config 'relu'"),
    (["--data.group", "D7"], "data group: checkpoint 'Z31', config 'D7'"),
    (["--model.optimizer", "torch.optim.SGD", "--model.optimizer.init_args.lr", "0.1"],
     "optimizer class: checkpoint 'Adam', config 'SGD'"),
])
def test_a_checkpoint_of_other_settings_is_refused_before_any_run_folder(fitted, tmp_path, flags, match):
    with pytest.raises(ValueError, match=match):
        run_cli(["fit", *QUICK, "--ckpt_path", str(fitted), *flags])
    assert not (tmp_path / "runs").exists()


def test_resuming_continues_the_run(fitted):
    cli = run_cli(["fit", *QUICK, "--ckpt_path", str(fitted), "--trainer.max_epochs", "5"])
    assert cli.trainer.current_epoch == 5 and cli.trainer.global_step == 5
    # every checkpoint write went through the atomic writer
    from li2_lightning.checkpoint import AtomicCheckpointIO

    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_group_too_large_for_memory_fails_within_seconds_and_writes_nothing(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"M=5000, K=16, .* needs about [\d.]+ GB on cpu .* use a group of order <= \d+"):
        run_cli(["fit", *QUICK, "--data.group", "Z5000"])
    assert time.perf_counter() - t0 < 15
    assert not (tmp_path / "runs").exists()


def _printed(capsys, *args) -> dict:
    with pytest.raises(SystemExit):
        run_cli(["fit", *args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)["data"]


def test_the_last_train_size_given_wins(capsys, tmp_path):
    fig3 = str(ROOT / "configs" / "fig3.yaml")  # sets n_train 2016
    data = _printed(capsys, "--config", fig3, "--data.train_fraction", "0.3")
    assert (data["train_fraction"], data["n_train"], data["p_star_multiplier"]) == (0.3, None, None)
    data = _printed(capsys, "--config", fig3, "--data.p_star_multiplier=2")
    assert (data["train_fraction"], data["n_train"], data["p_star_multiplier"]) == (None, None, 2.0)
    data = _printed(capsys, "--config", fig3, "--data.train_fraction", "0.3", "--data.n_train", "100")
    assert (data["train_fraction"], data["n_train"]) == (None, 100)
    mine = tmp_path / "mine.yaml"
    mine.write_text("data:\n  train_fraction: 0.25\n")
    data = _printed(capsys, "--config", fig3, "--config", str(mine))
    assert (data["train_fraction"], data["n_train"]) == (0.25, None)
    # the run trains on that many pairs
    cli = run_cli(["fit", *QUICK, "--config", fig3, "--data.train_fraction", "0.3", "--trainer.fast_dev_run", "true",
                   "--model.K", "16"])
    assert cli.datamodule.n_train == n_train_for(71, 0.3)
    # one file that sets two of them is still an error
    both = tmp_path / "both.yaml"
    both.write_text("data:\n  train_fraction: 0.25\n  n_train: 100\n")
    with pytest.raises(ValueError, match=r"set only one of train_fraction, n_train, p_star_multiplier"):
        run_cli(["fit", *QUICK, "--config", str(both)])


@pytest.mark.parametrize("flag, value, accepted", [
    ("--model.activation", "tanh", ["sqr", "relu", "silu", "relusqr"]),
    ("--model.loss", "hinge", ["mse", "ce"]),
])
def test_activation_and_loss_are_checked_at_parse_time_and_listed_in_help(capsys, tmp_path, flag, value, accepted):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *QUICK, flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert value in err and all(a in err for a in accepted)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):
        run_cli(["fit", "--help"])
    help_text = capsys.readouterr().out
    assert all(a in help_text for a in accepted)


def test_reduce_lr_on_plateau_from_the_command_line():
    cli = run_cli(["fit", *QUICK, "--trainer.max_epochs", "3",
                   "--model.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau",
                   "--model.scheduler.init_args.patience", "0"])
    [config] = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and config.monitor == "val/loss"
    assert cli.trainer.current_epoch == 3
    full = run_cli(["fit", *QUICK, "--trainer.max_epochs", "2", "--data.train_fraction", "1",
                    "--model.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"])
    assert full.trainer.lr_scheduler_configs[0].monitor == "train/loss"  # nothing held out


# --- W&B ----------------------------------------------------------------------------------------


def test_wandb_logger_from_python_goes_offline_without_a_key(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    from li2_lightning.wandb_mode import choose_wandb_mode

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert "no W&B API key" in choose_wandb_mode()  # the README's first line
    logger = WandbLogger(project="li2", save_dir=str(tmp_path))
    _trainer(2, logger=logger, enable_checkpointing=False).fit(Li2Module(K=8), GroupArithmeticDataModule("Z7"))
    wandb.finish()
    [run] = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert {row["epoch"] for row in finished_history(run) if "val/acc" in row} == {0, 1}


def test_a_resumed_run_continues_the_same_wandb_run(fitted, tmp_path):
    wandb_args = ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.init_args.project", "li2",
                  "--trainer.logger.init_args.id", "li2resume", "--trainer.logger.init_args.resume", "allow"]
    base = [a for a in QUICK if a not in ("--trainer.logger", "false")]
    first = run_cli(["fit", *base, *wandb_args, "--trainer.max_epochs", "3"])
    wandb.finish()
    ckpt = first.run_dir / "checkpoints" / "last.ckpt"
    second = run_cli(["fit", *base, *wandb_args, "--trainer.max_epochs", "6", "--ckpt_path", str(ckpt)])
    wandb.finish()
    [run1] = glob.glob(str(first.run_dir / "wandb" / "offline-run-*-li2resume"))
    [run2] = glob.glob(str(second.run_dir / "wandb" / "offline-run-*-li2resume"))

    def epochs_and_steps(run):
        rows = [r for r in finished_history(run) if "val/acc" in r]
        return [r["epoch"] for r in rows], [r["trainer/global_step"] for r in rows]

    e1, s1 = epochs_and_steps(run1)
    e2, s2 = epochs_and_steps(run2)
    assert e1 == [0, 1, 2] and e2 == [3, 4, 5]
    # the charts' x-axis (WandbLogger's step metric) continues; W&B's own _step restarts offline
    assert s1 == [0, 1, 2] and s2 == [3, 4, 5]
