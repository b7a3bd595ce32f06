"""No warning caused by this project on a normal `train.py fit` run, single process and under DDP.

Each run is a subprocess with ``-W always`` (every warning shown, every time); its stderr is searched
for Python's warning lines ("...Warning: ...") and Lightning's ("<file>.py:<line>: <message>").
Warnings raised inside Lightning's own calls to deprecated jsonargparse/torch APIs are filtered by
the CLI (``li2_lightning.cli._ignore_dependency_deprecations``), precisely by module.
"""

import os
import re
import subprocess
import sys
from pathlib import Path


from train_subprocess import free_port

ROOT = Path(__file__).resolve().parents[1]
WARNING_LINE = re.compile(r"Warning|WARNING|\.py:\d+: ")


def _run(tmp_path, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "none"), LI2_RUNS_DIR=str(tmp_path / "runs"),
               MASTER_PORT=free_port())
    result = subprocess.run(
        [sys.executable, "-W", "always", str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "default.yaml"),
         "--trainer.max_epochs", "3", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if WARNING_LINE.search(line)]


def test_a_default_run_shows_no_warning(tmp_path):
    assert _run(tmp_path) == []


def test_a_ddp_run_shows_no_warning(tmp_path):
    assert _run(tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu") == []


def test_the_search_finds_a_real_warning(tmp_path):
    """A run that does cause a Lightning warning (logging interval longer than the epoch) is caught,
    else the tests above would prove nothing."""
    lines = _run(tmp_path, "--trainer.log_every_n_steps", "50", "--model.K", "16")
    assert any("smaller than the logging interval" in line for line in lines), lines
