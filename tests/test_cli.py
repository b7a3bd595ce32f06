"""The CLI: dispatch, validation at the boundary, W&B mode choice, SIGTERM, the offline W&B run."""

import glob
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import wandb

from li2_lightning.cli import main, run_cli
from li2_lightning.wandb_mode import choose_wandb_mode
from li2_lightning.wandb_offline import read_config
from test_subcommands import finished_history

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.yaml")


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["li2"])  # LightningCLI also looks at sys.argv


class SigtermAt(pl.Callback):
    """Send this process SIGTERM at the end of epoch ``epoch`` (what a preempting scheduler does)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def _env(tmp_path, **extra):
    """A child environment with W&B's mode, key and netrc cleared, and tests/ importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "none"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), **extra)
    return env


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
    (["--torch_threads", "0"], "torch_threads=0"),
    (["--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "10"],
     r"--lr_scheduler is not used.*--model.scheduler"),
    (["--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1"], r"--optimizer is not used.*--model.optimizer"),
])
def test_bad_input_fails_before_any_run_directory_is_written(args, match, tmp_path, monkeypatch):
    """Values the parser accepts by type but the constructors refuse (activation and loss are refused by
    the parser itself: tests/test_subcommands.py)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LI2_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(ValueError, match=match):
        run_cli(["fit", "--config", DEFAULT, *args])
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline_run_is_written_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LI2_RUNS_DIR", str(tmp_path))
    cli = run_cli(["fit", "--config", DEFAULT, "--trainer.max_epochs", "4", "--trainer.accelerator", "cpu"])
    wandb.finish()  # flush the buffered tail of the run file
    assert cli.run_dir.parent == tmp_path / "default"
    [run_dir] = glob.glob(str(cli.run_dir / "wandb" / "offline-run-*"))
    history = finished_history(run_dir)
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
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert "no W&B API key for api.wandb.ai" in choose_wandb_mode()
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() is None and os.environ["WANDB_MODE"] == "disabled"


def test_wandb_base_url_names_the_host_to_probe_and_the_netrc_entry(monkeypatch, tmp_path):
    """A self-hosted server (here a socket listening on the loopback): its key and its reachability count."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password k1\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert "no W&B API key for 127.0.0.1" in choose_wandb_mode()  # the public host's key does not count

    netrc.write_text("machine 127.0.0.1 login user password k2\n")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert choose_wandb_mode() is None and "WANDB_MODE" not in os.environ  # key and server: online

    server.close()
    assert f"127.0.0.1:{port} cannot be reached" in choose_wandb_mode()


def test_wandb_line_only_with_a_wandb_logger(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    run_cli(["fit", "--config", DEFAULT, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
             "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--model.K", "16"])
    err = capsys.readouterr().err
    assert "W&B" not in err and "WANDB_MODE" not in os.environ


def test_help_names_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    for word in ("fit", "validate", "test", "predict", "li2 sweep", "li2 report"):
        assert word in out


def test_report_and_sweep_import_without_the_lightning_cli():
    code = ("import sys, li2_lightning.report, li2_lightning.sweep; "
            "assert 'li2_lightning.cli' not in sys.modules, 'report/sweep import the CLI'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_train_py_runs_from_the_command_line(tmp_path):
    env = _env(tmp_path)
    env.pop("LI2_RUNS_DIR", None)  # the users' default: runs/ in the current directory
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", DEFAULT, "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [run_dir] = (tmp_path / "runs" / "default").iterdir()
    assert "W&B runs offline: no W&B API key" in result.stderr
    assert "args parameter" not in result.stderr  # main() lets LightningCLI read the command line itself
    assert f"W&B run (offline) written to {run_dir}/wandb/offline-run-" in result.stdout
    assert result.stdout.count(f"li2: run folder {run_dir}") == 2  # at the start and at the end
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_sigterm_ends_the_run_with_a_nonzero_status(tmp_path):
    config = tmp_path / "sigterm.yaml"
    config.write_text("trainer:\n  callbacks+:\n    - class_path: test_cli.SigtermAt\n      init_args:\n"
                      "        epoch: 1\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", DEFAULT, "--config", str(config),
         "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--model.K", "16"],
        cwd=tmp_path, env=_env(tmp_path, WANDB_MODE="disabled"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, (result.returncode, result.stderr[-2000:])
    assert "stopped by SIGTERM" in result.stderr


@pytest.mark.parametrize("args, names", [
    (["--data.group", "G13"], "group='G13'"),
    (["--data.train_fraction", "1.5"], "train_fraction=1.5"),
])
def test_bad_input_from_the_command_line_is_one_line_with_status_2(args, names, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", DEFAULT, *args],
        cwd=tmp_path, env=_env(tmp_path, WANDB_MODE="disabled"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("li2 fit: error: ") and names in last
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.rglob("config.yaml"))  # nothing was written before the error


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    """The folder is claimed by creating it (os.mkdir fails for the second claimant), so two runs of
    one config started together never share a config.yaml or checkpoints."""
    from li2_lightning.cli import choose_run_dir

    folders = [choose_run_dir("same", root=str(tmp_path)) for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)
    assert {f.parent for f in folders} == {tmp_path / "same"}


@pytest.mark.parametrize("content, message", [
    (b"trainer: [max_epochs: 3\nmodel: {K: 4", "is not valid YAML at line 2, column 6"),
    (b"\x00\x89PNG\r\n", "is not a text file"),
    (b"- 1\n- 2\n", "holds a list; accepted: a mapping"),
])
def test_a_bad_config_file_is_named_in_the_error(content, message, tmp_path, monkeypatch):
    monkeypatch.setenv("LI2_RUNS_DIR", str(tmp_path / "runs"))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=f"config file '{bad}' {message}"):
        run_cli(["fit", "--config", DEFAULT, "--config", str(bad)])
    assert not (tmp_path / "runs").exists()
