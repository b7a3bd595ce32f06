"""The callbacks/ YAML bundles add the Li2 callbacks to a LightningCLI run, keeping its own callbacks."""

import glob
import os

import pytest
import yaml

from li2_lightning.callbacks import EnergyMonitor, FeatureMonitor, GFStructureMonitor, StageMonitor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = sorted(glob.glob(os.path.join(ROOT, "callbacks", "*.yaml")))


@pytest.mark.parametrize("path", BUNDLES, ids=os.path.basename)
def test_bundle_entries_instantiate(path):
    import importlib

    entries = yaml.safe_load(open(path))["trainer"]["callbacks+"]
    for entry in entries:
        module, name = entry["class_path"].rsplit(".", 1)
        importlib.import_module(module).__dict__[name](**entry.get("init_args", {}))


@pytest.mark.parametrize("path", BUNDLES, ids=os.path.basename)
def test_bundle_states_only_what_differs_from_the_defaults(path):
    import importlib
    import inspect

    for entry in yaml.safe_load(open(path))["trainer"]["callbacks+"]:
        module, name = entry["class_path"].rsplit(".", 1)
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        for key, value in entry.get("init_args", {}).items():
            assert value != params[key].default, f"{name}.{key}={value!r} restates the default"


def test_cli_run_with_bundle_keeps_the_configs_callbacks(tmp_path):
    from li2_lightning.cli import run_cli
    from li2_lightning.progress import EpochProgressBar

    cli = run_cli(["fit", "--config", os.path.join(ROOT, "configs", "default.yaml"),
                   "--config", os.path.join(ROOT, "callbacks", "li2_every10.yaml"),
                   "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                   "--trainer.logger.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
                   "--trainer.max_epochs", "3", "--model.K", "64"])
    kinds = {type(cb) for cb in cli.trainer.callbacks}
    assert {GFStructureMonitor, EnergyMonitor, FeatureMonitor, StageMonitor} <= kinds
    from lightning.pytorch.callbacks import ModelCheckpoint

    assert {ModelCheckpoint, EpochProgressBar} <= kinds  # the config's own callbacks are kept
    gf = next(cb for cb in cli.trainer.callbacks if isinstance(cb, GFStructureMonitor))
    assert [h["epoch"] for h in gf.history] == [0, 2]  # every 10 epochs, and the last
    assert glob.glob(str(tmp_path / "**" / "li2" / "irrep_power_epoch00000.png"), recursive=True)
