"""Checkpoints that are never half-written, checked before they are trusted.

Lightning's own writer builds the file in ``$TMPDIR`` and moves it; across filesystems the move is
a copy that truncates the target first, so a kill or a full disk during it loses ``last.ckpt``.
:class:`AtomicCheckpointIO` writes a temp file beside the target, fsyncs it and ``os.replace``-s
it into place: the target is always the old file or the new one, whole.

:func:`verify_checkpoint` checks a file before a run resumes from it (complete zip archive with
every member's CRC, loadable, finite weights, written by an ``Li2Module``), and
:func:`check_compatible` compares a checkpoint's settings with the run's, so that ``--ckpt_path``
never silently trains a different model, group or split.

Use it with ``Trainer(plugins=[AtomicCheckpointIO()])``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

PathLike = Union[str, os.PathLike]
_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")  # .<name>.tmp-<pid>-<rand>

# hyperparameters a resumed run may change: they act only at initialisation
RESUME_FREE_HPARAMS = frozenset({"V_init_scale"})
# data settings a run on a checkpoint may change: which pairs `predict` answers
RESUME_FREE_DATA = frozenset({"predict_pairs"})
_MISSING = object()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous file at the path is untouched."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def clean_orphans(folder: PathLike) -> list[Path]:
    """Remove temp files ``.<name>.tmp-<pid>-<rand>`` left in ``folder`` by dead processes.

    Only checkpoints written from one host are safe to clean this way (Lightning writes from global
    rank zero only): a pid is checked on this machine.

    Returns:
        The paths removed.
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP_RE.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:  # another process cleaned it first
                pass
    return removed


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` so that the path holds either its old content or all of the new.

    Writes ``.<name>.tmp-<pid>-<rand>`` in the same folder, fsyncs it, ``os.replace``-s it onto the
    path and fsyncs the folder. On any error (disk full, I/O error, interruption) the temp file is
    removed before the error propagates.

    Raises:
        CheckpointWriteError: (an ``OSError`` with the original errno) naming the path, when the
            write or the rename fails; the previous file at the path is left as it was.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException as err:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit (SIGTERM): as they are
            raise
        code = getattr(err, "errno", None) or _errno_of(err)
        raise CheckpointWriteError(
            code, f"could not write checkpoint '{path}': {err}; the previous file there (if any) is "
                  f"unchanged and no temp file was left (free space with `df -h {folder}`)") from err


def _errno_of(err: BaseException) -> int:
    """torch's zip writer reports a failed write as a RuntimeError; find the OS cause if any."""
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OSError) and cause.errno:
        return cause.errno
    return errno.ENOSPC if "write" in str(err).lower() else errno.EIO


def verify_checkpoint(
    path: PathLike,
    weights_only: Optional[bool] = True,
    map_location: Any = "cpu",
    require_hparams: bool = True,
) -> dict[str, Any]:
    """Check that ``path`` is a whole, uncorrupted Li2 checkpoint and return its contents.

    Checks, in order: the file is non-empty; it is a complete zip archive (``torch.save``'s
    format); every member's CRC-32 matches (``ZipFile.testzip``); ``torch.load`` reads it with
    ``weights_only`` as Lightning would; it holds a ``state_dict`` whose floating tensors are all
    finite; and (with ``require_hparams``) ``hyper_parameters``, which every ``Li2Module`` saves.

    Returns:
        The loaded checkpoint dict.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: naming the file and what is wrong with it.
    """
    path = Path(path)
    where = f"checkpoint '{path}'"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{where} is an empty file (a write was interrupted); resume from an older "
                         "checkpoint or start fresh")
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        if head == b"PK\x03\x04":
            raise ValueError(f"{where} is truncated ({size} bytes, the zip archive's end record is "
                             "missing): a write was cut off; resume from an older checkpoint")
        raise ValueError(f"{where} is not a checkpoint: not a zip archive as torch.save writes")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise ValueError(f"{where} is corrupt: its zip archive cannot be read ({err})") from None
    if bad is not None:
        raise ValueError(f"{where} is corrupt: member '{bad}' fails its CRC-32 check (flipped bytes "
                         "on disk or in transfer)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # torch raises several types for a malformed pickle
        raise ValueError(f"{where} passes its CRC checks but torch.load(weights_only={weights_only}) "
                         f"fails: {type(err).__name__}: {err}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"{where} is not a Lightning checkpoint: no 'state_dict' in it")
    for name, value in checkpoint["state_dict"].items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            n_bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{where} has non-finite weights: {n_bad} of {value.numel()} entries of "
                             f"'{name}' are NaN or infinite; resume from an older checkpoint")
    if require_hparams and "hyper_parameters" not in checkpoint:
        raise ValueError(f"{where} is not a li2_lightning checkpoint: it has no 'hyper_parameters' "
                         "(every Li2Module saves them)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """A ``CheckpointIO`` that writes atomically beside the target and verifies before loading.

    Saves go through :func:`atomic_save`; the first save or load in a folder removes temp files
    left there by killed processes (:func:`clean_orphans`). Loads go through
    :func:`verify_checkpoint`, so a truncated, corrupt or non-finite checkpoint is refused with a
    message instead of resuming.

    Args:
        require_hparams: refuse checkpoints without ``hyper_parameters`` (every ``Li2Module``
            checkpoint has them); set False to load checkpoints of other modules.
    """

    def __init__(self, require_hparams: bool = True) -> None:
        super().__init__()
        self.require_hparams = require_hparams
        self._cleaned: set[Path] = set()
        self._verified: Optional[tuple[Path, tuple[int, int], dict[str, Any]]] = None

    def keep_verified(self, path: PathLike, checkpoint: dict[str, Any]) -> None:
        """Hand over a checkpoint already read by :func:`verify_checkpoint` (the CLI checks
        ``--ckpt_path`` before building anything), so that the trainer's load of the same, unchanged
        file returns it instead of reading and checking it a second time."""
        path = Path(path).resolve()
        self._verified = (path, _stamp(path), checkpoint)

    def _clean_once(self, folder: Path) -> None:
        folder = folder.resolve()
        if folder not in self._cleaned:
            clean_orphans(folder)
            self._cleaned.add(folder)

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r} is not supported by AtomicCheckpointIO")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clean_once(path.parent)
        atomic_save(checkpoint, path)

    @override
    def load_checkpoint(
        self,
        path: PathLike,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        path = Path(path)
        if path.parent.is_dir():
            self._clean_once(path.parent)
        verified, self._verified = self._verified, None  # handed over once
        if verified is not None and verified[0] == path.resolve() and verified[1] == _stamp(path):
            return verified[2]
        return verify_checkpoint(path, weights_only=True if weights_only is None else weights_only,
                                 map_location=map_location, require_hparams=self.require_hparams)

    @override
    def remove_checkpoint(self, path: PathLike) -> None:
        path = Path(path)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)


def _stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a file: changes when the file is rewritten."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


# --- settings of a checkpoint against the run's ------------------------------------------------


def optimizer_signature(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What identifies an optimizer's kind for resuming: class, Muon preset, groups' ``use_muon``.

    Store it in the checkpoint (``checkpoint["li2_optimizer"] = optimizer_signature(opt)`` in
    ``on_save_checkpoint``) so that :func:`check_compatible` can name a changed preset; without it
    the class is inferred from the saved param_groups' keys.
    """
    return {
        "class": type(optimizer).__name__,
        "preset": getattr(optimizer, "preset", None),
        "use_muon": [bool(g.get("use_muon", False)) for g in optimizer.param_groups],
        "group_keys": [sorted(k for k in g if k not in ("params", "param_names")) for g in optimizer.param_groups],
    }


def _saved_optimizer_signature(checkpoint: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    if "li2_optimizer" in checkpoint:
        return dict(checkpoint["li2_optimizer"])
    states = checkpoint.get("optimizer_states") or []
    if not states:
        return None
    groups = states[0].get("param_groups", [])
    return {"class": None, "preset": None,
            "use_muon": [bool(g.get("use_muon", False)) for g in groups],
            "group_keys": [sorted(k for k in g if k not in ("params", "param_names")) for g in groups]}


def _optimizer_differences(saved: Optional[dict], current: Optional[dict]) -> list[str]:
    if saved is None or current is None:
        return []
    diffs = []
    for key in ("class", "preset"):
        if saved.get(key) is not None and saved.get(key) != current.get(key):
            diffs.append(f"optimizer {key}: checkpoint {saved[key]!r}, config {current.get(key)!r}")
    if saved.get("use_muon") != current.get("use_muon"):
        diffs.append(f"optimizer param groups' use_muon: checkpoint {saved.get('use_muon')}, "
                     f"config {current.get('use_muon')} (Muon against Adam groups)")
    elif saved.get("group_keys") != current.get("group_keys"):
        extra = sorted({k for g in saved.get("group_keys", []) for k in g}
                       ^ {k for g in current.get("group_keys", []) for k in g})
        diffs.append(f"optimizer param-group settings differ (a different optimizer class): "
                     f"keys only in one of them: {extra}")
    return diffs


def _normal_group(spec: Any) -> Any:
    if isinstance(spec, str) and not spec.strip().lower().endswith((".json", ".csv")):
        return re.sub(r"\s+", "", spec).upper().replace("×", "X")
    return spec


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any], what: str,
                 ignore: frozenset = frozenset(), defaults: Optional[Mapping[str, Any]] = None) -> list[str]:
    """Settings that differ; one the checkpoint lacks is taken as its default from ``defaults``.

    An older checkpoint predates settings added since: with their default it trained as the
    default does, so only a run that sets them otherwise differs.
    """
    defaults = defaults or {}
    diffs = []
    for key in sorted(set(saved) | set(current), key=str):
        if str(key).startswith("_") or key in ignore:
            continue
        a = saved.get(key, defaults.get(key, _MISSING))
        b = current.get(key, _MISSING)
        shown_a = "(not set)" if a is _MISSING else a
        shown_b = "(not set)" if b is _MISSING else b
        if key == "group":
            a, b = _normal_group(a), _normal_group(b)
        if a != b:
            where = "" if key in saved or a is _MISSING else " (the default: the checkpoint predates this setting)"
            diffs.append(f"{what} {key}: checkpoint {shown_a!r}{where}, config {shown_b!r}")
    return diffs


def check_compatible(
    checkpoint: Mapping[str, Any],
    hparams: Mapping[str, Any],
    data_hparams: Optional[Mapping[str, Any]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    model_defaults: Optional[Mapping[str, Any]] = None,
    data_defaults: Optional[Mapping[str, Any]] = None,
) -> None:
    """Refuse to resume when the checkpoint was trained with other settings than the run's.

    Compares the model's hyperparameters (K, activation, loss, M, output_scale, layers... every
    saved one except ``V_init_scale``, which only sets the initial values), the data's (group,
    train size, split and shuffle seeds, batch size) when both sides have them, and the
    optimizer's class, Muon preset and ``use_muon`` groups when ``optimizer`` is given.

    Meant as one call from ``LightningModule.on_load_checkpoint``::

        check_compatible(checkpoint, self.hparams, self.trainer.datamodule.hparams,
                         self.optimizer_factory(list(self.named_parameters())))

    Args:
        checkpoint: the loaded checkpoint dict.
        hparams: the run's model hyperparameters (``self.hparams``).
        data_hparams: the run's datamodule hyperparameters, or None to skip the data check.
        optimizer: an optimizer built as the run builds it, or None to skip that check.
        model_defaults, data_defaults: the constructors' defaults; a setting missing from the
            checkpoint (saved before the setting existed) is compared as its default. Without
            them such a setting counts as a difference.

    Raises:
        ValueError: naming every differing setting with the checkpoint's and the config's value,
            and what to do.
    """
    saved = checkpoint.get("hyper_parameters")
    if saved is None:
        raise ValueError("the checkpoint has no 'hyper_parameters': it was not written by Li2Module")
    diffs = _differences(saved, dict(hparams), "model", RESUME_FREE_HPARAMS, model_defaults)
    saved_data = checkpoint.get("datamodule_hyper_parameters")
    if data_hparams is not None and saved_data is not None:
        diffs += _differences(saved_data, dict(data_hparams), "data", RESUME_FREE_DATA, data_defaults)
    if optimizer is not None:
        diffs += _optimizer_differences(_saved_optimizer_signature(checkpoint), optimizer_signature(optimizer))
    if diffs:
        raise ValueError(
            "the checkpoint was trained with other settings than this run: " + "; ".join(diffs)
            + ". Resume with the checkpoint's settings (the config.yaml saved beside it, e.g. "
              "`--config <run dir>/config.yaml --ckpt_path ...`), or start fresh without --ckpt_path.")
