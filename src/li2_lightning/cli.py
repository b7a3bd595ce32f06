"""The command line: ``li2`` and ``python train.py``.

``main`` only dispatches: ``fit``/``validate``/``test``/``predict`` go to the Lightning CLI below,
``sweep`` to :mod:`li2_lightning.sweep` and ``report`` to :mod:`li2_lightning.report`.

The Lightning CLI loads ``configs/base.yaml`` before any ``--config`` (an experiment file states only
what differs from it), gives each run its own folder ``runs/<experiment>/<date-time>/`` (root:
``$LI2_RUNS_DIR``, else ``runs`` in the current directory; ``--trainer.default_root_dir DIR`` makes DIR
the run folder itself), and turns a SIGTERM into exit status 143 once Lightning has stopped the run.

Before anything is written it checks that the run fits in memory and that a ``--ckpt_path`` is a
whole checkpoint trained with the run's settings; every checkpoint is written atomically
(:class:`~li2_lightning.checkpoint.AtomicCheckpointIO`, added unless a CheckpointIO plugin is given).
The train size takes the last of ``train_fraction``, ``n_train``, ``p_star_multiplier`` that the
command line gives (a ``--data.*`` flag, or a ``--config`` file that sets one): it clears the other
two set before it; one file setting two of them is an error. ``predict`` writes
``predictions.csv`` (h1, h2, predicted h1·h2) into the run folder.
"""

from __future__ import annotations

import atexit
import csv
import importlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from li2_lightning.checkpoint import AtomicCheckpointIO, verify_checkpoint
from li2_lightning.data import TRAIN_SIZE_FORMS, GroupArithmeticDataModule
from li2_lightning.module import Li2Module
from li2_lightning.wandb_mode import choose_wandb_mode
from li2_lightning.yaml_files import load_mapping

BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"
RUNS_DIR_ENV = "LI2_RUNS_DIR"
# DDP (strategy=ddp) re-runs this script once per extra rank; rank 0 passes its run folder down as
# "<pid>:<path>" so that every rank writes into the same one, whatever the clock says
_RUN_DIR_ENV = "_LI2_RUN_DIR"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
DESCRIPTION = ("Li2 grokking experiments. Lightning subcommands: fit, validate, test, predict "
               "(`li2 fit --config configs/fig3.yaml`). Also: `li2 sweep FILE` runs a sweep of "
               "populations, `li2 report RESULTS.jsonl` renders its figures (`li2 sweep --help`, "
               "`li2 report --help`).")
SIGTERM_STATUS = 143  # 128 + SIGTERM, what a shell reports for a process the signal ended

_print0 = rank_zero_only(print)


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _is(entry: Any, base: type) -> bool:
    """Whether a parsed ``class_path``/``init_args`` entry names a subclass of ``base``."""
    class_path = getattr(entry, "class_path", None)
    return isinstance(class_path, str) and issubclass(_class(class_path), base)


def _entries(value: Any) -> list:
    """A logger or callbacks setting as a list of class_path entries (False/None: none)."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def choose_run_dir(experiment: str, root: Optional[str] = None) -> Path:
    """A fresh folder ``<root>/<experiment>/<YYYYmmdd-HHMMSS>[-n]``, claimed by creating it.

    ``root`` defaults to ``$LI2_RUNS_DIR``, else ``runs`` in the current directory. The folder is
    made with ``os.mkdir``, which fails when another process made it first, so two runs started in
    the same second get two folders; a folder this process leaves empty (an error before the run
    wrote anything) is removed at exit. A DDP child process gets its rank zero's folder instead.
    """
    inherited = os.environ.get(_RUN_DIR_ENV, "")
    pid, _, path = inherited.partition(":")
    if path and pid == str(os.getppid()) and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(path)
    root = Path(root or os.environ.get(RUNS_DIR_ENV) or "runs").resolve()
    stamp = root / experiment / time.strftime("%Y%m%d-%H%M%S")
    top = stamp.parent  # the highest folder this call creates: removed again with the run's if unused
    while not top.parent.exists():
        top = top.parent
    stamp.parent.mkdir(parents=True, exist_ok=True)
    run_dir, n = stamp, 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            n += 1
            run_dir = stamp.with_name(f"{stamp.name}-{n}")
    _CLAIMED.append((run_dir, top))
    atexit.register(_remove_if_empty, run_dir, top)
    return run_dir


_CLAIMED: list[tuple[Path, Path]] = []  # (run folder, highest folder made for it) of this process


def _remove_if_empty(folder: Path, top: Path) -> None:
    """Leave nothing behind for a run that stopped before writing anything: remove ``folder`` and
    its parents up to ``top`` (the folders made for it), each only if empty."""
    try:
        while True:
            folder.rmdir()  # only succeeds on an empty folder
            if folder == top or top not in folder.parents:
                return
            folder = folder.parent
    except OSError:
        pass


# values of --ckpt_path that Lightning resolves itself rather than naming a file
_CKPT_ALIASES = ("last", "best", "hpc", "registry")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A ``--config`` file's settings; a file that is not a YAML mapping is refused, named."""
    return load_mapping(path, "config file", "a mapping of settings (trainer:, model:, data:, ...)")


def _train_size_form(value: Any) -> Optional[str]:
    """Which of the train-size forms a data section sets (None: none); the last one if several."""
    if not isinstance(value, dict):
        return None
    given = [k for k in TRAIN_SIZE_FORMS if value.get(k) is not None]
    return given[-1] if given else None


def last_train_size_wins(args: list[str]) -> list[str]:
    """``args`` with the train-size forms a later flag or ``--config`` file replaces set to null.

    Before each ``--data.<form> V`` flag (and each ``--config FILE`` whose ``data`` section sets a
    form) the other two forms are cleared, so that the last one given decides the size.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, inline = word.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        form = None
        if name.startswith("--data.") and name[len("--data."):] in TRAIN_SIZE_FORMS:
            if value is not None and value.strip().lower() not in ("null", "none", ""):
                form = name[len("--data."):]
        elif name == "--config" and value is not None and Path(value).is_file():
            loaded = load_config_file(value)
            form = _train_size_form(loaded.get("data"))
        if form is not None:
            for other in TRAIN_SIZE_FORMS:
                if other != form:
                    out += [f"--data.{other}", "null"]
        out.append(word)
        i += 1
    return out


class Li2CLI(LightningCLI):
    """LightningCLI with the data's group order linked to the model's M, a folder per run, and W&B set up."""

    run_dir: Optional[Path] = None
    _checkpoint: Optional[dict] = None  # the verified --ckpt_path, until its settings are compared

    def parse_arguments(self, parser, args) -> None:
        if args is None:
            # rewritten in place: DDP re-launches this script with sys.argv, and LightningCLI warns
            # when it is given both args and a command line
            sys.argv[1:] = last_train_size_wins(sys.argv[1:])
        elif isinstance(args, list):
            args = last_train_size_wins(args)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built; keep the config's model settings.

        LightningCLI would load the file unchecked here and silently replace the command line's
        model settings by the checkpoint's; instead a corrupt, empty or foreign file is refused
        naming the file, and a checkpoint trained with other settings is refused naming the
        differences (in :meth:`after_instantiate_classes`).
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in _CKPT_ALIASES:
            self._checkpoint = verify_checkpoint(ckpt_path)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.M", "model.M", apply_on="instantiate")
        parser.add_argument(
            "--torch_threads", type=Optional[int], default=None,
            help="torch CPU threads for this process (default: torch's choice). 1 is fastest for "
                 "small nets or when other processes share the cores; DDP sets 1 per rank.")
        parser.add_argument(
            "--experiment", type=str, default="li2",
            help="experiment name: the run folder is <runs root>/<experiment>/<date-time>, and the "
                 "W&B run's name unless the logger sets one")

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand, self.config)
        threads = cfg.get("torch_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"torch_threads={threads!r} is not accepted; accepted: an integer >= 1")
            torch.set_num_threads(threads)
        for flag, where in (("lr_scheduler", "--model.scheduler"), ("optimizer", "--model.optimizer")):
            if cfg.get(flag) is not None:
                raise ValueError(
                    f"--{flag} is not used by Li2Module (LightningCLI would replace its configure_optimizers "
                    f"and lose the parameter names Muon needs); give it as {where}, e.g. {where} "
                    + ("torch.optim.lr_scheduler.CosineAnnealingLR --model.scheduler.T_max 300"
                       if flag == "lr_scheduler" else "torch.optim.Adam --model.optimizer.lr 0.001"))
        self._drop_disabled_callbacks(cfg.trainer)
        self._place_run(cfg)
        loggers = _entries(cfg.trainer.get("logger"))
        if not cfg.trainer.get("fast_dev_run") and any(_is(lg, WandbLogger) for lg in loggers):
            reason = choose_wandb_mode()
            if reason:
                _print0(f"li2: W&B runs offline: {reason}", file=sys.stderr)

    def instantiate_trainer(self, **kwargs: Any):
        """The trainer, with :class:`AtomicCheckpointIO` unless a CheckpointIO plugin is configured."""
        plugins = kwargs.pop("plugins", None)
        if plugins is None:
            plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def after_instantiate_classes(self) -> None:
        """Refuse, before anything is written, a run that cannot fit or a checkpoint that does not fit the run."""
        if not isinstance(self.model, Li2Module) or not isinstance(self.datamodule, GroupArithmeticDataModule):
            return
        self.model.check_memory(self.datamodule, str(self.trainer.strategy.root_device), self.subcommand)
        if self._checkpoint is not None:
            self.model.check_resume(self._checkpoint, self.datamodule, fitting=self.subcommand == "fit")
            checkpoint_io = self.trainer.strategy.checkpoint_io
            if isinstance(checkpoint_io, AtomicCheckpointIO):  # the trainer's load takes it, not a second read
                checkpoint_io.keep_verified(self.config[self.subcommand]["ckpt_path"], self._checkpoint)
            self._checkpoint = None

    @staticmethod
    def _drop_disabled_callbacks(trainer) -> None:
        """Drop the config's checkpoint or progress-bar callbacks that a trainer flag switches off.

        The base config lists them, and Lightning refuses ``enable_checkpointing=False`` or
        ``enable_progress_bar=False`` next to such a callback; ``fast_dev_run`` writes no checkpoints.
        """
        callbacks = _entries(trainer.get("callbacks"))
        no_ckpt = trainer.get("enable_checkpointing") is False or bool(trainer.get("fast_dev_run"))
        no_bar = trainer.get("enable_progress_bar") is False
        keep = [cb for cb in callbacks
                if not (no_ckpt and _is(cb, ModelCheckpoint)) and not (no_bar and _is(cb, ProgressBar))]
        if len(keep) != len(callbacks):
            dropped = sorted({cb.class_path.rpartition(".")[2] for cb in callbacks if cb not in keep})
            _print0(f"li2: the trainer flags switch off {', '.join(dropped)}: left out of this run", file=sys.stderr)
            trainer.callbacks = keep
        if trainer.get("fast_dev_run") and trainer.get("enable_checkpointing") is None:
            trainer.enable_checkpointing = False

    def _place_run(self, cfg) -> None:
        """Put this run's config.yaml, checkpoints, logs and images in one folder of its own."""
        trainer = cfg.trainer
        if trainer.get("default_root_dir"):
            self.run_dir = Path(trainer.default_root_dir).resolve()
        else:
            self.run_dir = choose_run_dir(cfg.get("experiment") or "li2")
        os.environ[_RUN_DIR_ENV] = f"{os.getpid()}:{self.run_dir}"
        trainer.default_root_dir = str(self.run_dir)
        for logger in _entries(trainer.get("logger")):
            args = logger.get("init_args")
            if args is None:
                continue
            # absolute: W&B's service process resolves relative paths in its own working directory
            if "save_dir" in args and args.save_dir in (None, "", "."):
                args.save_dir = str(self.run_dir)
            if _is(logger, WandbLogger) and args.get("name") is None:
                args.name = cfg.get("experiment")
        for cb in _entries(trainer.get("callbacks")):
            if _is(cb, ModelCheckpoint) and cb.get("init_args") is not None and cb.init_args.get("dirpath") is None:
                cb.init_args.dirpath = str(self.run_dir / "checkpoints")

    def _announce(self) -> None:
        _print0(f"li2: run folder {self.run_dir}")

    def _start(self) -> None:
        """Before any subcommand's loop: say where the run goes, and start W&B without warnings."""
        self._announce()
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and self.trainer.is_global_zero:
                _quiet_wandb_init(logger)

    before_validate = before_test = before_predict = _start

    def after_predict(self) -> None:
        """Write the predictions (h1, h2, predicted h1·h2) as ``predictions.csv`` in the run folder."""
        batches = self.trainer.predict_loop.predictions or []
        if batches and isinstance(batches[0], list):  # several dataloaders
            batches = [b for loader in batches for b in loader]
        if self.trainer.is_global_zero and batches:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path = self.run_dir / "predictions.csv"
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["h1", "h2", "prediction"])
                writer.writerows(torch.cat(batches).tolist())
            _print0(f"li2: predictions written to {path}")
        self._announce()

    def before_fit(self) -> None:
        self._start()
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
                mode = os.environ.get("WANDB_MODE", "online")
                folder = os.path.dirname(logger.experiment.dir)
                if mode == "disabled" or not os.path.isdir(folder):
                    continue  # a disabled run writes nothing: no path to point at
                print(f"W&B run ({mode}) written to {folder}"
                      + ("; upload it later with `wandb sync` on that folder" if mode == "offline" else ""))
        self._announce()

    after_validate = after_test = _announce


def _quiet_wandb_init(logger: WandbLogger) -> None:
    """Remove two W&B warnings every run printed, before the W&B run starts.

    The run folder is made first (W&B warns "git root ... does not exist" when its save_dir is not
    there yet), and Lightning's ``anonymous=None`` is dropped from the init arguments (wandb 0.31
    warns that the setting has no effect whenever it is passed, even as None).
    """
    if logger.save_dir:
        os.makedirs(logger.save_dir, exist_ok=True)
    init_args = getattr(logger, "_wandb_init", None)  # Lightning keeps wandb.init's kwargs here
    if isinstance(init_args, dict) and init_args.get("anonymous") is None:
        init_args.pop("anonymous", None)


def _plain(value):
    """A config value as plain dicts and lists, for the W&B config."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def _ignore_dependency_deprecations() -> None:
    """Ignore deprecations raised inside Lightning's own calls on every run.

    Lightning 2.6 still calls jsonargparse 4.53 and torch 2.13 APIs those have deprecated; nothing
    a user of this CLI can change. The filters name the module the warning is raised from, so the
    same warnings from user code, and every other warning, still show.
    """
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli$")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree$")


def check_config_files(words: list[str]) -> None:
    """Read every ``--config FILE`` before the parser does, so a bad file is named in the error.

    jsonargparse reports a YAML error as "in <unicode string>, line 2", without the file.

    Raises:
        ValueError: naming the file, when it is not UTF-8 text, not valid YAML (with line and column),
            or not a mapping of settings.
    """
    paths = [b for a, b in zip(words, words[1:]) if a in ("--config", "-c")]
    paths += [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
    for path in paths:
        if os.path.isfile(path):  # else inline YAML, or a missing file the parser names itself
            load_config_file(path)


def run_cli(args: Optional[list[str]] = None, base_config: Optional[Path] = BASE_CONFIG) -> Li2CLI:
    """Run the Lightning CLI on ``args`` (None: the command line) with ``base_config`` loaded first."""
    check_config_files(sys.argv[1:] if args is None else list(args))
    _ignore_dependency_deprecations()
    # Late in training, values below ~1e-38 (subnormal floats) slowed CPU runs up to 40-fold
    torch.set_flush_denormal(True)
    common = {"parser_mode": "omegaconf"}
    per_subcommand = dict(common, default_config_files=[str(base_config)] if base_config else [])
    try:
        return Li2CLI(
            Li2Module,
            GroupArithmeticDataModule,
            parser_kwargs={**common, "description": DESCRIPTION, **{s: per_subcommand for s in SUBCOMMANDS}},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except BaseException:
        while _CLAIMED:  # an error before the run wrote anything leaves no empty folder behind
            _remove_if_empty(*_CLAIMED.pop())
        raise


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: ``li2 {fit,validate,test,predict,sweep,report} ...``.

    Args:
        argv: the arguments after the program name; None reads the command line.
    """
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] == "sweep":
        from li2_lightning.sweep import main as sweep_main

        return sweep_main(words[1:])
    if words and words[0] == "report":
        from li2_lightning.report import main as report_main

        return report_main(words[1:])
    try:
        run_cli(argv)
    except SIGTERMException:
        # Lightning has stopped the loops and torn down; a zero status would read as a finished run
        print(f"li2: stopped by SIGTERM; exit status {SIGTERM_STATUS}", file=sys.stderr)
        sys.exit(SIGTERM_STATUS)
    except (ValueError, FileNotFoundError, FloatingPointError, OSError) as err:
        # Bad input (a setting, a file, a checkpoint) and a diverged run are the user's to fix: one
        # line naming what is wrong reads better than a traceback through Lightning's internals.
        if os.environ.get("LI2_TRACEBACK"):
            raise
        command = words[0] if words and not words[0].startswith("-") else "fit"
        print(f"li2 {command}: error: {err}  (LI2_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        sys.exit(2 if isinstance(err, (ValueError, FileNotFoundError)) else 1)
