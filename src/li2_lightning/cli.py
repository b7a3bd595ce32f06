"""The Lightning CLI for li2_lightning (``python train.py`` and the ``li2`` console script)."""

from __future__ import annotations

import netrc
import os
import socket
import sys
from typing import Optional

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module

WANDB_HOST = "api.wandb.ai"


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _wandb_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((WANDB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_wandb_mode() -> Optional[str]:
    """Set WANDB_MODE=offline when W&B has no API key or its server cannot be reached.

    A mode the user set is kept. Returns the reason for going offline, or None.
    """
    if os.environ.get("WANDB_MODE"):
        return None
    if not _has_wandb_key():
        reason = "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    elif not _wandb_reachable():
        reason = "the W&B server cannot be reached"
    else:
        return None
    os.environ["WANDB_MODE"] = "offline"
    return reason


class Li2CLI(LightningCLI):
    """LightningCLI with the data's group order linked to the model's M, and W&B set up."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.M", "model.M", apply_on="instantiate")
        parser.add_argument(
            "--torch_threads", type=Optional[int], default=None,
            help="torch CPU threads for this process (default: torch's choice). 1 is fastest for "
                 "small nets or when other processes share the cores; DDP sets 1 per rank.")

    def before_instantiate_classes(self) -> None:
        threads = self.config.get(self.subcommand, self.config).get("torch_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"torch_threads={threads!r} is not accepted; accepted: an integer >= 1")
            torch.set_num_threads(threads)

    def before_fit(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and self.trainer.is_global_zero:
                # the W&B config gets model and data hparams by itself; add the rest
                cfg = self.config.get(self.subcommand, self.config)
                model_cfg = cfg.get("model", {})
                logger.experiment.config.update(
                    {"optimizer": _plain(model_cfg.get("optimizer")),
                     "scheduler": _plain(model_cfg.get("scheduler")),
                     "trainer": _plain(cfg.get("trainer")),
                     "seed_everything": cfg.get("seed_everything")},
                    allow_val_change=True)

    def after_fit(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and self.trainer.is_global_zero:
                run = logger.experiment
                mode = os.environ.get("WANDB_MODE", "online")
                print(f"W&B run ({mode}) written to {os.path.dirname(run.dir)}"
                      + ("; upload it later with `wandb sync` on that folder" if mode == "offline" else ""))


def _plain(value):
    """A config value as plain dicts and lists, for the W&B config."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def run_cli(args: Optional[list[str]] = None) -> Li2CLI:
    """Run the Lightning CLI on ``args`` (default: sys.argv[1:])."""
    # Late in training, values below ~1e-38 (subnormal floats) slowed CPU runs up to 40-fold
    torch.set_flush_denormal(True)
    reason = choose_wandb_mode()
    if reason:
        print(f"li2: W&B runs offline: {reason}", file=sys.stderr)
    return Li2CLI(
        Li2Module,
        GroupArithmeticDataModule,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point.

    ``li2 fit --config configs/default.yaml`` is the same as ``python train.py fit ...``;
    ``li2 sweep FILE`` runs a sweep and ``li2 report RESULTS`` renders its figures.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sweep":
        from li2_lightning.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "report":
        from li2_lightning.report import main as report_main

        return report_main(argv[1:])
    run_cli(argv)
