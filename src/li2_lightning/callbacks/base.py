"""Li2Callback: what every Li2 monitor shares (cadence, snapshot, logging, history, state).

A monitor supplies only its computation: :meth:`Li2Callback.compute` maps the epoch's
:class:`~li2_lightning.callbacks.snapshot.Snapshot` to scalars, and :meth:`Li2Callback.media`
optionally writes images or tables. The base class decides when to act (``every_n_epochs``:
epochs 0, n, 2n, ... and the last, never in the sanity check; the keys users monitor are logged
then, the rest of a monitor's keys, its *detail*, every ``detail_every_n_epochs``, since each
logged key costs ~0.5 ms in Lightning), shares one snapshot per epoch
with the other Li2 callbacks of the Trainer, logs the scalars with one ``pl_module.log_dict``
call (so they reach ``trainer.callback_metrics``: EarlyStopping and ModelCheckpoint can monitor
them, and loggers write them in the epoch's row, at the step of ``train/*``), keeps a history
of them, and saves that history in checkpoints under a ``state_key`` that tells two instances
with different settings apart.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from li2_lightning.callbacks.snapshot import Snapshot, SnapshotCache

# Under DDP the Li2 scalars are computed from the full training set on every rank, so they are
# logged with sync_dist=False; Lightning's advice to sync them does not apply to these keys.
_SYNC_ADVICE = r"It is recommended to use `self.log\('(li2/|stage|milestones/)"


class Li2Callback(Callback):
    """Base of the Li2 monitors: cadence, the shared snapshot, logging, history and state.

    Args:
        every_n_epochs: cadence of the scalars users monitor (epochs 0, n, 2n, ... and the last).
        detail_every_n_epochs: cadence of the monitor's other scalars (0: never).

    Raises:
        ValueError: if ``every_n_epochs`` is not an integer >= 1 or ``detail_every_n_epochs`` not
            one >= 0.
    """

    def __init__(self, every_n_epochs: int = 1, detail_every_n_epochs: int = 0) -> None:
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("detail_every_n_epochs", detail_every_n_epochs, allow_zero=True)
        self.every_n_epochs = every_n_epochs
        self.detail_every_n_epochs = detail_every_n_epochs
        self.history: list[dict[str, float]] = []
        self._cache: Optional[SnapshotCache] = None

    # --- what a monitor supplies --------------------------------------------------------------
    def compute(self, s: Snapshot, trainer: Trainer) -> dict[str, float]:
        """Scalars of the epoch's snapshot (called on every rank when :meth:`scalars_due`); the
        detail keys only when :meth:`detail_due`."""
        raise NotImplementedError

    def media(self, trainer: Trainer, s: Snapshot) -> None:
        """Images or tables for the epoch (called on every rank when :meth:`snapshot_due`)."""

    def settings(self) -> dict[str, Any]:
        """The settings that tell two instances apart (part of :attr:`state_key`)."""
        return {"every_n_epochs": self.every_n_epochs, "detail_every_n_epochs": self.detail_every_n_epochs}

    def extra_state(self) -> dict[str, Any]:
        """What the monitor keeps in checkpoints besides its history."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    # --- cadence ------------------------------------------------------------------------------
    @staticmethod
    def due(trainer: Trainer, every_n_epochs: int) -> bool:
        """Whether a cadence fires now: epochs 0, n, 2n, ... and the last; never in sanity checks; 0 never."""
        if trainer.sanity_checking or every_n_epochs <= 0:
            return False
        e = trainer.current_epoch
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and e == trainer.max_epochs - 1
        return e % every_n_epochs == 0 or last

    def scalars_due(self, trainer: Trainer) -> bool:
        return self.due(trainer, self.every_n_epochs) or self.detail_due(trainer)

    def detail_due(self, trainer: Trainer) -> bool:
        """Whether the detail keys are logged now (``detail_every_n_epochs``)."""
        return self.due(trainer, self.detail_every_n_epochs)

    def snapshot_due(self, trainer: Trainer) -> bool:
        """Whether this epoch needs the snapshot (scalars or media); override for extra cadences."""
        return self.scalars_due(trainer)

    # --- the shared snapshot ------------------------------------------------------------------
    def _shared_cache(self, trainer: Trainer) -> SnapshotCache:
        """The snapshot cache of this Trainer's Li2 callbacks, held by the first in the list."""
        if self._cache is None or not self._cache.serves(trainer):
            peers = [cb for cb in trainer.callbacks if isinstance(cb, Li2Callback)] or [self]
            owner = peers[0]
            if owner._cache is None or not owner._cache.serves(trainer):
                owner._cache = SnapshotCache(trainer)
            self._cache = owner._cache
        return self._cache

    # --- hooks --------------------------------------------------------------------------------
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self.settings())

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._shared_cache(trainer)
        if trainer.world_size > 1:
            warnings.filterwarnings("ignore", message=_SYNC_ADVICE)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._shared_cache(trainer).epoch_start(trainer, pl_module, self.snapshot_due(trainer))

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.snapshot_due(trainer):
            return
        s = self._shared_cache(trainer).snapshot(trainer, pl_module)
        if self.scalars_due(trainer):
            scalars = self.compute(s, trainer)
            self.history.append({"epoch": float(trainer.current_epoch), **scalars})
            self.log_epoch(pl_module, scalars)
        self.media(trainer, s)

    def log_epoch(self, pl_module: LightningModule, scalars: dict[str, float]) -> None:
        """Log the epoch's scalars: one ``log_dict`` call."""
        log_scalars(pl_module, scalars)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._cache is not None:
            self._cache.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), **self.extra_state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.load_extra_state(state_dict)


def log_scalars(pl_module: LightningModule, scalars: dict[str, float], **kwargs: Any) -> None:
    """One ``log_dict`` call for an epoch's scalars (each logged key costs ~0.5 ms in Lightning).

    Epoch-level, not synced: the values are identical on every rank.
    """
    if scalars:
        pl_module.log_dict(scalars, on_step=False, on_epoch=True, batch_size=1, sync_dist=False, **kwargs)


def warn_missing_key(owner: Any, warned: set, trainer: Trainer, setting: str, key: str, consequence: str) -> None:
    """A one-time warning that a configured metric key is not in ``trainer.callback_metrics``."""
    if key in warned or trainer.current_epoch + 1 < (trainer.check_val_every_n_epoch or 1):
        return  # validation may not have run yet
    warned.add(key)
    have = sorted(k for k in trainer.callback_metrics if "/" in k or k.endswith("acc"))[:12]
    rank_zero_warn(f"{type(owner).__name__}({setting}={key!r}): no metric {key!r} is logged "
                   f"(trainer.callback_metrics has {have}); {consequence}. Set {setting} to the "
                   "name your module logs.")


# --- validation -------------------------------------------------------------------------------
def check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    """ValueError naming ``name`` unless value is an int ≥ 1 (≥ 0 with ``allow_zero``)."""
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        extra = " (0 disables)" if allow_zero else ""
        raise ValueError(f"{name}={value!r} is not accepted; accepted: an integer >= {lo}{extra}")


def check_unit(name: str, value: Any, lo_open: bool = False) -> None:
    """ValueError naming ``name`` unless value is a number in [0, 1] ((0, 1] with ``lo_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (0 < value <= 1) if lo_open else (0 <= value <= 1))
    if not ok:
        rng = "(0, 1]" if lo_open else "[0, 1]"
        raise ValueError(f"{name}={value!r} is not accepted; accepted: a number in {rng}")
