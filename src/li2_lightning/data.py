"""Group arithmetic data: all M² pairs (h1, h2) -> h1·h2, a seeded train/test split, full batch."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from li2_lightning.groups import Group, make_group
from li2_lightning.memory import check_data_fits

P_STAR_C = 2.7482  # the author's constant in p* = c ln M / M (docs/theory.md §9)
DEFAULT_TRAIN_FRACTION = 0.4


def critical_fraction(M: int, c: float = P_STAR_C) -> float:
    """The critical train fraction p* = c · ln M / M of the scaling law (docs/theory.md §9, Theorem 4)."""
    return c * math.log(M) / M


def n_train_for(M: int, train_fraction: float) -> int:
    """Training pairs for a train fraction, as in the author's code: n = M² − ⌈(1 − p) M²⌉."""
    # round first so that 0.6 * 5041 = 3024.6000000000004 does not become 3025 by float noise
    return M * M - math.ceil(round((1.0 - train_fraction) * M * M, 9))


def split_pairs(M: int, n_train: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of the M² pair indices (a·M + b) into sorted train and test indices."""
    perm = torch.randperm(M * M, generator=torch.Generator().manual_seed(split_seed))
    return perm[:n_train].sort().values, perm[n_train:].sort().values


def resolve_n_train(
    M: int,
    train_fraction: Optional[float] = None,
    n_train: Optional[int] = None,
    p_star_multiplier: Optional[float] = None,
    p_star_c: float = P_STAR_C,
) -> int:
    """The number of training pairs set by one of its three forms (default: train_fraction 0.4).

    Raises:
        ValueError: if more than one form is given, or the size is outside its accepted range.
    """
    given = [k for k, v in [("train_fraction", train_fraction), ("n_train", n_train),
                            ("p_star_multiplier", p_star_multiplier)] if v is not None]
    if len(given) > 1:
        raise ValueError(f"set only one of train_fraction, n_train, p_star_multiplier; got {given}")
    if p_star_c <= 0:
        raise ValueError(f"p_star_c={p_star_c!r} is not accepted; accepted: a number > 0")
    if p_star_multiplier is not None:
        if not p_star_multiplier > 0:
            raise ValueError(f"p_star_multiplier={p_star_multiplier!r} is not accepted; accepted: a number > 0")
        train_fraction = min(1.0, p_star_multiplier * critical_fraction(M, p_star_c))
    if n_train is None:
        p = DEFAULT_TRAIN_FRACTION if train_fraction is None else train_fraction
        if not 0.0 < p <= 1.0:
            raise ValueError(f"train_fraction={p!r} is outside the accepted range (0, 1]")
        n_train = n_train_for(M, p)
    if int(n_train) != n_train or not 1 <= n_train <= M * M:
        raise ValueError(
            f"n_train={n_train!r} is not accepted for a group of order {M}; accepted: an integer in "
            f"[1, M²={M * M}] (a train_fraction this small leaves no training pair)")
    return int(n_train)


TRAIN_SIZE_FORMS = ("train_fraction", "n_train", "p_star_multiplier")


def train_size_settings(hparams: Mapping[str, Any], M: int) -> dict[str, Any]:
    """The data settings with the train size in one form: ``n_train`` resolved, the other forms dropped.

    Two settings that give the same number of training pairs (``train_fraction 0.4`` and
    ``n_train 2016`` on Z71) compare equal. Settings that do not resolve are returned unchanged.
    """
    settings = dict(hparams)
    try:
        n = resolve_n_train(M, *(settings.get(k) for k in TRAIN_SIZE_FORMS),
                            p_star_c=settings.get("p_star_c", P_STAR_C))
    except (ValueError, TypeError):
        return settings
    for key in TRAIN_SIZE_FORMS + ("p_star_c",):
        settings.pop(key, None)
    settings["n_train"] = n
    return settings


class _Batches(Dataset):
    """This rank's share of each batch of an epoch, as ``(x, y, denom)``, one item per step.

    A map-style dataset of whole batches (served with ``DataLoader(batch_size=None)``): its length
    is the number of steps, which the progress bar shows, and Lightning has no
    ``IterableDataset``-with-``__len__`` to warn about.

    ``denom`` is the global batch size over the world size, so that the loss Σ_shard ℓ / denom,
    averaged over ranks by DDP, is exactly the global batch's mean loss (no padded duplicates).
    Every rank draws the same permutation and takes every world_size-th row of each batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: Optional[int],
        shuffle_seed: int,
        rank: int,
        world_size: int,
        epoch_fn: Callable[[], int],
        shuffle: bool = True,
    ) -> None:
        self.x, self.y, self.shuffle = x, y, shuffle
        self.batch_size, self.shuffle_seed = batch_size, shuffle_seed
        self.rank, self.world_size, self.epoch_fn = rank, world_size, epoch_fn
        self._perm_epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None
        if batch_size is None:  # full batch: prebuilt once, one step per epoch
            self._full = self._shard(torch.arange(len(y)))

    def _shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mine = idx[self.rank :: self.world_size]
        denom = torch.tensor(len(idx) / self.world_size, dtype=torch.float32)
        return self.x[mine], self.y[mine], denom

    def __len__(self) -> int:
        return 1 if self.batch_size is None else math.ceil(len(self.y) / self.batch_size)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} is past the epoch's {len(self)} batches")
        if self.batch_size is None:
            return self._full
        epoch = self.epoch_fn()
        if not self.shuffle:
            self._perm = torch.arange(len(self.y))
        elif epoch != self._perm_epoch:
            # the same permutation on every rank; seeded by the epoch so a resumed run replays it
            g = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.y), generator=g), epoch
        start = step * self.batch_size
        return self._shard(self._perm[start : start + self.batch_size])


class GroupArithmeticDataModule(pl.LightningDataModule):
    """All M² pairs of a group, split into train and test, served full batch by default.

    The train set size is set by one of ``train_fraction``, ``n_train`` or ``p_star_multiplier``
    (a multiple of the critical fraction p* = ``p_star_c`` · ln M / M, capped at 1); with none of
    them it is ``train_fraction=0.4``. A batch is ``(x, y, denom)``: index pairs x (b, 2), targets
    y (b,), and the global batch size over the world size (see :class:`_Batches`).

    Under DDP every rank holds the same split and takes every world_size-th row of each batch.

    ``validate`` and ``test`` evaluate the held-out pairs; ``predict`` the pairs ``predict_pairs``
    (default: all M² pairs, row a·M + b is (a, b)), in batches of ``batch_size``.

    Args:
        group: a spec for :func:`li2_lightning.groups.make_group` (``Z97``, ``Z4xZ7``, ``D7``,
            ``S4``, ``A4``, ``Q8``, or a path to a Cayley table ``.json``/``.csv``).
        train_fraction: p in (0, 1].
        n_train: number of training pairs, 1..M².
        p_star_multiplier: train fraction as a multiple of p* (> 0).
        p_star_c: the constant c in p*.
        split_seed: seed of the train/test split (independent of the model's init seed).
        batch_size: None for full batch (one optimizer step per epoch, the paper's "epoch").
        shuffle_seed: seed of the minibatch order (used only with ``batch_size``).
        predict_pairs: the pairs (h1, h2) ``predict`` answers; None for all M² pairs.

    Raises:
        ValueError: on an unknown group, a train size outside its range, more than one of
            ``train_fraction``, ``n_train``, ``p_star_multiplier``, or M² pairs that would not fit
            in the memory available (checked before they are allocated), or a predict pair
            with an element outside 0..M-1.
    """

    def __init__(
        self,
        group: str = "Z23",
        train_fraction: Optional[float] = None,
        n_train: Optional[int] = None,
        p_star_multiplier: Optional[float] = None,
        p_star_c: float = P_STAR_C,
        split_seed: int = 0,
        batch_size: Optional[int] = None,
        shuffle_seed: int = 0,
        predict_pairs: Optional[list[tuple[int, int]]] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.group: Group = make_group(group)
        M = self.M
        n_train = resolve_n_train(M, train_fraction, n_train, p_star_multiplier, p_star_c)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not accepted; accepted: None or >= 1")
        self.n_train = n_train
        self.batch_size = batch_size
        self.shuffle_seed = shuffle_seed
        check_data_fits(M)  # before the M² pairs are allocated
        train_idx, test_idx = split_pairs(M, n_train, split_seed)
        self.train_x, self.train_y = self._pairs(train_idx)
        self.test_x, self.test_y = self._pairs(test_idx)
        if predict_pairs is None:
            self.predict_x = None  # all M² pairs, built when predict asks for them
        else:
            pairs = torch.as_tensor(predict_pairs, dtype=torch.long).reshape(-1, 2)  # (n, 2)
            if len(pairs) and (pairs.min() < 0 or pairs.max() >= M):
                raise ValueError(f"predict_pairs={predict_pairs!r} is not accepted; accepted: pairs "
                                 f"[h1, h2] of elements 0..{M - 1} of {group}")
            self.predict_x = pairs

    @property
    def M(self) -> int:
        """Group order, also the number of classes."""
        return self.group.order

    @property
    def train_fraction(self) -> float:
        """The realised train fraction n / M²."""
        return self.n_train / self.M**2

    def _pairs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1, h2 = idx // self.M, idx % self.M
        return torch.stack([h1, h2], dim=1), self.group.table[h1, h2]

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _epoch(self) -> int:
        return 0 if self.trainer is None else self.trainer.current_epoch

    def _loader(self, x: torch.Tensor, y: torch.Tensor, batch_size: Optional[int], shuffle: bool = True) -> DataLoader:
        rank, world = self._world()
        batches = _Batches(x, y, batch_size, self.shuffle_seed, rank, world, self._epoch, shuffle)
        return DataLoader(batches, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_x, self.train_y, self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.test_y) == 0:  # train_fraction 1: nothing held out
            return []
        return self._loader(self.test_x, self.test_y, None)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_pairs_x(self) -> torch.Tensor:
        """The pairs (n, 2) ``predict`` answers: ``predict_pairs``, or all M² pairs in index order."""
        if self.predict_x is not None:
            return self.predict_x
        return self._pairs(torch.arange(self.M * self.M))[0]

    def predict_dataloader(self) -> DataLoader:
        x = self.predict_pairs_x()
        return self._loader(x, self.group.table[x[:, 0], x[:, 1]], self.batch_size, shuffle=False)
