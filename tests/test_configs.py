"""configs/: every experiment runs, composes from configs/base.yaml to the settings it had as one flat
file, gives each run its own folder, and keeps last.ckpt at the final epoch."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from li2_lightning.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "base.yaml")
# the last commit with flat configs (each file restating the trainer, logger and callbacks)
FLAT = "de8cfb6"
# replaced on purpose by the run folder, the experiment name and the callbacks list compared below
PLACED = {"trainer.default_root_dir", "trainer.logger.init_args.save_dir", "trainer.logger.init_args.name",
          "trainer.callbacks"}


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["li2"])  # LightningCLI also looks at sys.argv
    monkeypatch.setenv("LI2_RUNS_DIR", str(tmp_path))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) and key not in PLACED else {key: v})
    return out


def _printed(config: Path, capsys, *more: str) -> dict:
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(config), *more, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_config_runs_a_fast_dev_run(config, tmp_path):
    cli = run_cli(["fit", "--config", str(config), "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.M == cli.datamodule.M  # linked from the data
    assert cli.run_dir.parent == tmp_path / config.stem
    assert not list(tmp_path.rglob("*.ckpt"))  # fast_dev_run writes no checkpoints


def _flat_at(commit: str, path: str) -> dict:
    try:
        text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"{path} has no flat version at {commit} (a config added after the composition, or no git "
                    "history in this checkout)")
    return yaml.safe_load(text)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_composed_config_keeps_the_flat_settings(config, capsys):
    old = _flat_at(FLAT, f"configs/{config.name}")
    new = _printed(config, capsys)
    flat_new = _flat(new)
    for key, value in _flat(old).items():
        if key not in PLACED:
            assert flat_new[key] == value, key
    assert new["experiment"] == old["trainer"]["logger"]["init_args"]["name"] == config.stem
    assert new["trainer"]["logger"]["class_path"] == old["trainer"]["logger"]["class_path"]
    assert new["trainer"]["logger"]["init_args"]["project"] == old["trainer"]["logger"]["init_args"]["project"]
    # the same callbacks, plus the end-of-fit last.ckpt writer; every_n_epochs is 50 everywhere now
    # (fig8_* checkpointed every 100; only the rolling top-1 file's cadence changes)
    old_cbs, new_cbs = old["trainer"]["callbacks"], new["trainer"]["callbacks"]
    assert [c["class_path"] for c in new_cbs] == [c["class_path"] for c in old_cbs] + [old_cbs[-1]["class_path"]]
    periodic, last = new_cbs[1]["init_args"], new_cbs[2]["init_args"]
    assert periodic["save_top_k"] == old_cbs[1]["init_args"]["save_top_k"] and periodic["every_n_epochs"] == 50
    assert last["save_last"] is True and last["save_top_k"] == 0


def test_bundle_composes_with_a_config(capsys):
    new = _printed(ROOT / "configs" / "fig3.yaml", capsys, "--config", str(ROOT / "callbacks" / "li2_every10.yaml"))
    paths = [c["class_path"].rsplit(".", 1)[1] for c in new["trainer"]["callbacks"]]
    assert paths == ["EpochProgressBar", "ModelCheckpoint", "ModelCheckpoint", "GFStructureMonitor",
                     "EnergyMonitor", "FeatureMonitor", "StageMonitor"]
    assert new["trainer"]["callbacks"][3]["init_args"]["every_n_epochs"] == 10


def test_two_runs_of_one_config_leave_two_folders(tmp_path):
    args = ["fit", "--config", str(ROOT / "configs" / "default.yaml"), "--trainer.max_epochs", "1",
            "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--model.K", "16"]
    first, second = run_cli(args).run_dir, run_cli(args).run_dir
    assert first != second and first.parent == second.parent == tmp_path / "default"
    assert sorted(p.parent for p in tmp_path.rglob("config.yaml")) == sorted([first, second])
    for run_dir in (first, second):
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["default_root_dir"] == str(run_dir)


def test_last_ckpt_holds_the_final_epoch_between_multiples(tmp_path):
    """7 epochs, a checkpoint every 5: the rolling one holds epoch 5, last.ckpt all 7."""
    base = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    callbacks = [cb for cb in base["trainer"]["callbacks"] if cb["class_path"].endswith("ModelCheckpoint")]
    callbacks[0]["init_args"]["every_n_epochs"] = 5
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    cli = run_cli(["fit", "--config", str(ROOT / "configs" / "default.yaml"), "--config", str(exp),
                   "--trainer.max_epochs", "7", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                   "--model.K", "16"])
    ckpts = {p.name: torch.load(p, weights_only=False) for p in (cli.run_dir / "checkpoints").glob("*.ckpt")}
    assert set(ckpts) == {"last.ckpt", "epoch=4-step=5.ckpt"}
    assert ckpts["last.ckpt"]["global_step"] == 7 and ckpts["epoch=4-step=5.ckpt"]["global_step"] == 5


@pytest.mark.parametrize("flag", ["--trainer.enable_checkpointing", "--trainer.enable_progress_bar"])
def test_switching_off_a_configured_callback_works(flag, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    cli = run_cli(["fit", "--config", str(ROOT / "configs" / "default.yaml"), flag, "false",
                   "--trainer.max_epochs", "2", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                   "--model.K", "16"])
    assert cli.trainer.current_epoch == 2
    off = ModelCheckpoint if "checkpointing" in flag else ProgressBar
    assert not any(isinstance(cb, off) for cb in cli.trainer.callbacks)
    if off is ModelCheckpoint:
        assert not list(tmp_path.rglob("*.ckpt"))
    else:
        assert (cli.run_dir / "checkpoints" / "last.ckpt").is_file()
