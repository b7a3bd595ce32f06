"""Launch `python train.py fit` as a subprocess for the DDP tests.

`strategy="ddp"` inside pytest would re-launch pytest itself (ECOSYSTEM.md), so the multi-rank
runs go through train.py. tests/ is put on the children's PYTHONPATH so that callbacks defined in
test modules can be named in their configs; each launch gets its own free MASTER_PORT. Run folders go
under $LI2_RUNS_DIR (set by conftest.py to a pytest temp dir), never into the checkout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> str:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def train_subprocess(config: Path, *extra: str) -> subprocess.Popen:
    """Start `train.py fit --config CONFIG EXTRA...` with W&B disabled; output merged into stdout."""
    if not os.environ.get("LI2_RUNS_DIR"):
        raise RuntimeError("LI2_RUNS_DIR is not set: tests/conftest.py sets it so that runs stay out of the checkout")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
               MASTER_PORT=free_port(), WANDB_MODE="disabled")
    return subprocess.Popen([sys.executable, "train.py", "fit", "--config", str(config), *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
