import math

import pytest
import torch

from li2_lightning.data import GroupArithmeticDataModule, _Batches, critical_fraction, n_train_for
from li2_lightning.losses import loss_sum


def test_fig3_split_size_follows_the_authors_convention():
    # n = M² − ⌈(1 − p) M²⌉; Fig. 3's 40% of Z71 is 2016 pairs
    assert n_train_for(71, 0.4) == 2016
    for M in (5, 23, 71, 97):
        for p in (0.05, 0.3, 0.4, 0.55, 1.0):
            assert n_train_for(M, p) == M * M - math.ceil((1 - p) * M * M - 1e-9)


def test_split_is_seeded_disjoint_complete_and_labelled_by_the_table():
    dm = GroupArithmeticDataModule("S4", train_fraction=0.3, split_seed=7)
    M = dm.M
    pairs = torch.cat([dm.train_x, dm.test_x])
    codes = pairs[:, 0] * M + pairs[:, 1]
    assert sorted(codes.tolist()) == list(range(M * M))
    assert len(dm.train_y) == n_train_for(M, 0.3)
    for (h1, h2), y in zip(pairs.tolist(), torch.cat([dm.train_y, dm.test_y]).tolist()):
        assert dm.group.table[h1, h2] == y
    again = GroupArithmeticDataModule("S4", train_fraction=0.3, split_seed=7)
    other = GroupArithmeticDataModule("S4", train_fraction=0.3, split_seed=8)
    assert torch.equal(again.train_x, dm.train_x) and not torch.equal(other.train_x, dm.train_x)


def test_p_star_multiplier_sets_the_train_fraction():
    dm = GroupArithmeticDataModule("Z97", p_star_multiplier=1.5, p_star_c=2.0)
    p = 1.5 * 2.0 * math.log(97) / 97
    assert dm.n_train == n_train_for(97, p)
    assert critical_fraction(97) == pytest.approx(2.7482 * math.log(97) / 97)
    assert GroupArithmeticDataModule("Z5", p_star_multiplier=100).n_train == 25  # capped at 1


@pytest.mark.parametrize("kwargs, match", [
    ({"group": "Z1"}, "M must be >= 2"),
    ({"group": "G13"}, "not a known group.*accepted"),
    ({"group": "Z5", "train_fraction": 0.0}, r"train_fraction=0.0 .*\(0, 1\]"),
    ({"group": "Z5", "train_fraction": 1.5}, r"train_fraction=1.5 .*\(0, 1\]"),
    ({"group": "Z5", "n_train": 26}, r"n_train=26 .*\[1, M²=25\]"),
    ({"group": "Z5", "train_fraction": 0.01}, r"n_train=0"),
    ({"group": "Z5", "train_fraction": 0.5, "n_train": 3}, "only one of"),
    ({"group": "Z5", "p_star_multiplier": -1.0}, "p_star_multiplier=-1.0"),
    ({"group": "Z5", "batch_size": 0}, "batch_size=0"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupArithmeticDataModule(**kwargs)


def _mean_over_ranks(x, y, world, out_fn, batch_size=None, epoch=0):
    """What DDP computes: the mean over ranks of each rank's loss, for every step of an epoch."""
    per_rank = [list(_Batches(x, y, batch_size, 3, r, world, lambda: epoch)) for r in range(world)]
    steps = []
    for step_batches in zip(*per_rank):
        losses = [loss_sum("mse", out_fn(bx), by) / d for bx, by, d in step_batches]
        steps.append((torch.stack(losses).mean(), [bx for bx, _, _ in step_batches]))
    return steps


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ddp_shards_give_exactly_the_full_batch_loss_without_duplicates(world):
    dm = GroupArithmeticDataModule("Z7", n_train=31, split_seed=0)  # 31 rows: uneven shards
    torch.manual_seed(0)
    table = torch.randn(7, 7, 7, dtype=torch.float64)
    out_fn = lambda bx: table[bx[:, 0], bx[:, 1]]  # noqa: E731
    full = loss_sum("mse", out_fn(dm.train_x), dm.train_y) / 31
    [(loss, shards)] = _mean_over_ranks(dm.train_x, dm.train_y, world, out_fn)
    assert abs(loss.item() - full.item()) < 1e-6 * full.item()  # denom n/world is float32
    seen = torch.cat(shards)
    assert len(seen) == 31 and len(torch.unique(seen[:, 0] * 7 + seen[:, 1])) == 31


def test_minibatches_cover_the_set_once_per_epoch_and_replay_by_epoch():
    dm = GroupArithmeticDataModule("Z7", n_train=30, split_seed=0)
    torch.manual_seed(0)
    table = torch.randn(7, 7, 7, dtype=torch.float64)
    out_fn = lambda bx: table[bx[:, 0], bx[:, 1]]  # noqa: E731
    steps = _mean_over_ranks(dm.train_x, dm.train_y, 2, out_fn, batch_size=8, epoch=4)
    assert len(steps) == 4
    seen = torch.cat([torch.cat(s) for _, s in steps])
    assert len(torch.unique(seen[:, 0] * 7 + seen[:, 1])) == 30 == len(seen)
    replay = _mean_over_ranks(dm.train_x, dm.train_y, 2, out_fn, batch_size=8, epoch=4)
    other = _mean_over_ranks(dm.train_x, dm.train_y, 2, out_fn, batch_size=8, epoch=5)
    assert all(torch.equal(a[1][0], b[1][0]) for a, b in zip(steps, replay))
    assert not all(torch.equal(a[1][0], b[1][0]) for a, b in zip(steps, other))


def test_trainer_sees_the_step_count_without_the_iterable_len_warning():
    import warnings

    import lightning.pytorch as pl

    from li2_lightning.module import Li2Module

    dm = GroupArithmeticDataModule("Z7", n_train=30, batch_size=8)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Li2Module(K=4), dm)
    assert not [w for w in caught if "IterableDataset" in str(w.message)]
    assert trainer.num_training_batches == math.ceil(30 / 8)  # the progress bar's total
    assert trainer.global_step == 2 * math.ceil(30 / 8)


def test_pairs_that_cannot_fit_are_refused_before_they_are_allocated(monkeypatch):
    import li2_lightning.memory as memory

    # a machine with 2 MB free: Z200's 40 000 pairs (40 bytes each, ×1.5) do not fit, Z100's do
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 2_000_000)
    with pytest.raises(ValueError, match=r"M=200: its M² = 40000 pairs need about 2.4 MB") as err:
        GroupArithmeticDataModule("Z200")
    m_max = max(m for m in range(2, 200) if 1.5 * 40 * m * m <= 2_000_000)
    assert f"use a group of order <= {m_max}" in str(err.value)
    GroupArithmeticDataModule("Z100")
