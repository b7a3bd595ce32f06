"""A population spread over 2 CPU processes (gloo, spawn launcher) equals the same population in one process."""

import warnings

import pytest
import torch

from li2_lightning.population import PopulationModule, make_members, train_population
from li2_lightning.population_ddp import member_slots


def _population(**kwargs):
    # uneven train sizes, lrs and an odd S: ranks hold 3 and 2 members with different padding widths
    members = make_members([0, 1, 2, 3, 4], lr=[1e-2, 2e-2, 1e-2, 5e-3, 3e-2],
                           train_fraction=[0.3, 0.4, 0.5, 0.4, 0.6])
    return PopulationModule(group="Z7", K=16, members=members, **kwargs)


def _close(a, b, tol=1e-6):
    """Within tol, relative above 1: a rank pads its members' rows to its own widest member, so sums
    over rows may round differently in float32 (test losses reach ~4, where 1 ulp is 4.8e-7)."""
    return bool(((a - b).abs() <= tol * a.abs().clamp(min=1)).logical_or(a.isnan() & b.isnan()).all())


def test_member_slots_cover_every_member_once():
    for S in (1, 2, 5, 8):
        for N in range(1, S + 1):
            slots = [s for r in range(N) for s in member_slots(S, r, N)]
            assert sorted(slots) == list(range(S))
            sizes = [len(member_slots(S, r, N)) for r in range(N)]
            assert max(sizes) - min(sizes) <= 1


def test_two_processes_equal_one_member_by_member():
    warnings.filterwarnings("ignore")
    one = _population(stop_at_test_acc=0.03, check_every=5)
    rows_one = train_population(one, 60, accelerator="cpu")
    two = _population(stop_at_test_acc=0.03, check_every=5)
    rows_two = train_population(two, 60, accelerator="cpu", devices=2)  # spawn: 2 processes, gloo

    h1, h2 = one.history(), two.history()
    # rank 1's members (1, 3) all pass 0.03 at the last check while rank 0's (0, 2, 4) do not: a
    # rank deciding alone would stop early (and the ranks would disagree); together they never stop
    assert bool((h1[60, [1, 3], 3] >= 0.03).all()) and not bool((h1[60, [0, 2, 4], 3] >= 0.03).all())
    assert not rows_one[0]["stopped_early"] and not rows_two[0]["stopped_early"]
    assert h1.shape == h2.shape == (h1.shape[0], 5, 4)  # the stop came at the same epoch: decided together
    assert torch.equal(h1.isnan(), h2.isnan())
    assert _close(h1, h2)
    for k, v in one.lightning_metrics().items():
        assert _close(v, two.lightning_metrics()[k]), k
    assert (one.W - two.W).abs().max() <= 1e-6 and (one.V - two.V).abs().max() <= 1e-6
    assert len(rows_one) == len(rows_two) == 5
    for a, b in zip(rows_one, rows_two):  # the original member order, every column
        assert a.keys() == b.keys()
        for key, va in a.items():
            if isinstance(va, float):
                assert b[key] == pytest.approx(va, abs=1e-5), key
            else:
                assert va == b[key], key
    # the members are not all alike, so an order mix-up would show
    assert len({round(r["final_train_loss"], 6) for r in rows_one}) == 5


def test_a_population_with_a_policy_is_refused_across_devices():
    from li2_lightning.population_ddp import MemberParallelStrategy

    module = _population(policy="stop-done")

    class _Trainer:  # only what setup reads before refusing
        pass

    strategy = MemberParallelStrategy()
    strategy._lightning_module = module
    strategy.model = module
    with pytest.raises(ValueError, match="cannot be spread over devices"):
        strategy.setup(_Trainer())
