import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb

from li2_lightning.cli import choose_wandb_mode, run_cli
from li2_lightning.wandb_offline import read_config, read_history

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "*.yaml")))


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["li2"])  # LightningCLI also looks at sys.argv


@pytest.mark.parametrize("config", CONFIGS, ids=[Path(c).stem for c in CONFIGS])
def test_every_config_runs_a_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs write under runs/
    cli = run_cli(["fit", "--config", config, "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu"])
    assert cli.trainer.global_step >= 1
    assert cli.model.hparams.M == cli.datamodule.M  # linked from the data


def test_print_config_shows_the_linked_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(ROOT / "configs" / "fig3.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "group: Z71" in out and "n_train: 2016" in out and "K: 2048" in out and "weight_decay: 0.0002" in out


@pytest.mark.parametrize("args, match", [
    (["--data.group", "G13"], "group='G13' is not a known group"),
    (["--data.group", "Z1"], "M must be >= 2"),
    (["--data.train_fraction", "1.5"], r"train_fraction=1.5 is outside the accepted range \(0, 1\]"),
    (["--data.train_fraction", "null", "--data.n_train", "999"], r"n_train=999 .*\[1, M²=961\]"),
    (["--model.K", "0"], "K=0"),
    (["--model.activation", "tanh"], "activation='tanh'"),
    (["--model.loss", "hinge"], "loss='hinge'"),
    (["--torch_threads", "0"], "torch_threads=0"),
])
def test_bad_input_fails_before_any_run_directory_is_written(args, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        run_cli(["fit", "--config", str(ROOT / "configs" / "default.yaml"), *args])
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline_run_is_written_and_read_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # an absolute save_dir: wandb's service process may have been started by an earlier test in
    # another working directory, and it resolves relative paths against its own
    run_cli(["fit", "--config", str(ROOT / "configs" / "default.yaml"), "--trainer.max_epochs", "4",
             "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs" / "default")])
    wandb.finish()  # flush the buffered tail of the run file
    [run_dir] = glob.glob(str(tmp_path / "runs" / "default" / "wandb" / "offline-run-*"))
    history = read_history(run_dir)
    by_epoch = {}
    for row in history:
        by_epoch.setdefault(row["epoch"], {}).update(row)
    assert sorted(by_epoch) == [0, 1, 2, 3]
    for row in by_epoch.values():
        assert {"train/loss", "train/acc", "val/loss", "val/acc", "train/W_norm", "train/V_norm"} <= set(row)
        assert 0.0 <= row["val/acc"] <= 1.0
    # the loss falls under Adam from epoch 0 to 3
    assert by_epoch[3]["train/loss"] < by_epoch[0]["train/loss"]
    config = read_config(run_dir)
    assert config["K"] == 512 and config["group"] == "Z31" and config["M"] == 31
    assert config["optimizer"]["init_args"]["lr"] == 0.003 and config["trainer"]["max_epochs"] == 4


def test_wandb_goes_offline_without_a_key_and_keeps_a_chosen_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert "no W&B API key" in choose_wandb_mode()
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() is None and os.environ["WANDB_MODE"] == "disabled"


def test_train_py_runs_from_the_command_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "none"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "default.yaml"),
         "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W&B runs offline: no W&B API key" in result.stderr
    assert "W&B run (offline) written to runs/default/wandb/offline-run-" in result.stdout
    assert (tmp_path / "runs" / "default").is_dir()
