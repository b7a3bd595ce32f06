"""Shared test set-up: one torch thread (2-core machine), W&B never online, runs outside the checkout."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ.setdefault("WANDB_DISABLE_CODE", "true")
os.environ.pop("WANDB_API_KEY", None)

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _finish_wandb_runs():
    """A W&B run left open by one test would be reused by the next test's WandbLogger."""
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.fixture(autouse=True, scope="session")
def _runs_outside_the_checkout(tmp_path_factory):
    """CLI runs (in-process and subprocesses) put their run folders under a pytest temp dir, not runs/."""
    os.environ["LI2_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))
    yield
    os.environ.pop("LI2_RUNS_DIR", None)
