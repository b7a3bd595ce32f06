"""Members with their own lives: per-member stages, stops, frozen slots and refill (issue 13)."""

import warnings

import lightning.pytorch as pl
import pytest
import torch

from li2_lightning.analysis import features as ft
from li2_lightning.analysis.irreps import fourier_blocks, real_blocks
from li2_lightning.callbacks import StageMonitor
from li2_lightning.functional import updates
from li2_lightning.groups import make_group
from li2_lightning.population import MemberSettings, OptimizerSpec, PopulationModule, make_members, train_population
from li2_lightning.population_policy import MemberTrack, StopPolicy, member_observables, run_points
from li2_lightning.stages import Observation, Stage, Thresholds
from test_population import _li2_run, _li2module_optimizer, _trainer

warnings.filterwarnings("ignore")


# --- the update layer's mask and per-member step --------------------------------------------------
@pytest.mark.parametrize("rule", ["adam_coupled", "adamw", "sgd_momentum", "muon"])
def test_inactive_member_is_frozen_and_others_move_as_without_mask(rule):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 6, 5, generator=g)
    grads = [torch.randn(3, 6, 5, generator=g) for _ in range(3)]
    grads[-1][1].zero_()  # zero gradient: Adam with coupled decay would still move member 1
    lr, wd = torch.tensor([1e-2, 2e-2, 3e-2]), torch.tensor([1e-2, 5e-2, 0.0])

    def run(active_last):
        p, state = p0.clone(), {}
        for i, gr_ in enumerate(grads):
            active = torch.tensor([True, not active_last, True]) if i == len(grads) - 1 else None
            if rule.startswith("adam"):
                updates.adam_(p, gr_, state, lr=lr, weight_decay=wd, decoupled=rule == "adamw", active=active)
            elif rule == "sgd_momentum":
                updates.sgd_(p, gr_, state, lr=lr, weight_decay=wd, momentum=0.9, active=active)
            else:
                updates.muon_(p, gr_, state, lr=lr, weight_decay=wd, active=active)
        return p, state

    before = run(False)  # all active: the reference for members 0 and 2
    p, state = run(True)
    # member 1 after two steps (the frozen third step changed nothing): recompute two steps alone
    p2, state2 = p0.clone(), {}
    for gr_ in grads[:2]:
        if rule.startswith("adam"):
            updates.adam_(p2, gr_, state2, lr=lr, weight_decay=wd, decoupled=rule == "adamw")
        elif rule == "sgd_momentum":
            updates.sgd_(p2, gr_, state2, lr=lr, weight_decay=wd, momentum=0.9)
        else:
            updates.muon_(p2, gr_, state2, lr=lr, weight_decay=wd)
    assert torch.equal(p[1], p2[1])
    for k, v in state.items():
        if v.dim() == 3:
            assert torch.equal(v[1], state2[k][1]), k
            assert torch.equal(v[[0, 2]], before[1][k][[0, 2]]), k
    assert torch.equal(p[[0, 2]], before[0][[0, 2]])
    assert not torch.equal(before[0][1], p2[1])  # the unmasked step does move member 1


def test_member_step_gives_each_member_torch_adams_bias_correction():
    """Member 1 starts two steps late (step counts 3 and 1): each equals its own torch.optim.Adam."""
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(2, 4, 3, generator=g)
    grads = [torch.randn(2, 4, 3, generator=g) for _ in range(4)]
    p, state, step = p0.clone(), {}, torch.zeros(2, dtype=torch.float64)
    for i, gr_ in enumerate(grads):
        active = torch.tensor([True, i >= 2])
        step += active.double()
        updates.adam_(p, gr_, state, lr=torch.tensor([1e-2, 1e-2]), weight_decay=torch.tensor([1e-3, 1e-3]),
                      active=active, step=step)
    for s, first in ((0, 0), (1, 2)):
        w = torch.nn.Parameter(p0[s].clone())
        opt = torch.optim.Adam([w], lr=1e-2, weight_decay=1e-3)
        for gr_ in grads[first:]:
            w.grad = gr_[s].clone()
            opt.step()
        torch.testing.assert_close(p[s], w.detach(), atol=1e-6, rtol=1e-6)


# --- batched observables --------------------------------------------------------------------------
def _brute_observables(W, V, x, y, M, basis, nodes):
    """One member, written out: explicit centring, ỸỸᵀF̃ formed as an (n, n) product."""
    F = (W[x[:, 0]] + W[M + x[:, 1]]).double() ** 2  # σ = x²
    O = F @ V.double()
    Y = torch.nn.functional.one_hot(y, M).double()
    R = Y - O
    R = R - R.mean(1, keepdim=True)
    G = R @ V.double().T
    Fc = F - F.mean(0)
    Yc = Y - Y.mean(0)
    L = Yc @ Yc.T @ Fc
    a_G = float((G * L).sum() / (G.norm() * L.norm()))
    Fk = Fc[:, :nodes]
    Gr = Fk.T @ Fk
    k = Gr.shape[0]
    indep = float((Gr.abs().sum() - Gr.diagonal().abs().sum()) / (k * (k - 1)) / Gr.diagonal().abs().mean())
    power = ft.irrep_power(W, basis)
    return a_G, indep, float(ft.purity(power).mean()), ft.coverage(power, 0.9)


@pytest.mark.parametrize("group", ["Z11", "D5"])
def test_member_observables_equal_each_member_alone(group):
    grp = make_group(group)
    M, K, S = grp.order, 12, 3
    basis = fourier_blocks(M) if group.startswith("Z") else real_blocks(grp.table)
    g = torch.Generator().manual_seed(2)
    W, V = torch.randn(S, 2 * M, K, generator=g), torch.randn(S, K, M, generator=g) * 0.1
    W[1, :M, 0] = basis.Q[:, 1] * 3  # a pure node, so coverage is not trivially 0
    W[1, M:, 0] = basis.Q[:, 1] * 3
    ns = [30, 45, 20]
    xs = [torch.randint(0, M, (n, 2), generator=g) for n in ns]
    width = max(ns)
    x = torch.zeros(S, width, 2, dtype=torch.long)
    mask = torch.zeros(S, width)
    for s, xi in enumerate(xs):
        x[s, : ns[s]] = xi
        mask[s, : ns[s]] = 1
    y = grp.table[x[..., 0], x[..., 1]]
    F = (torch.stack([W[s][x[s, :, 0]] + W[s][M + x[s, :, 1]] for s in range(S)])) ** 2
    obs = member_observables(W, V, F, y, mask, M, basis, independence_nodes=8)
    for s in range(S):
        a, i, p, c = _brute_observables(W[s], V[s], xs[s], y[s, : ns[s]], M, basis, 8)
        torch.testing.assert_close(float(obs["a_G"][s]), a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(float(obs["independence"][s]), i, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(float(obs["purity"][s]), p, atol=1e-5, rtol=1e-5)
        assert float(obs["coverage"][s]) == c
    assert float(obs["coverage"][1]) > 0


# --- the rule per member equals StageMonitor's -----------------------------------------------------
def test_population_of_one_follows_stage_monitor_transitions():
    group, K, seed, split, frac, lr, wd, epochs, every = "Z13", 64, 0, 10, 0.6, 2e-2, 5e-3, 150, 5
    pop = PopulationModule(group, K, members=make_members([seed], split_seed=split, train_fraction=frac, lr=lr,
                                                          weight_decay=wd),
                           policy=StopPolicy("off", check_every=every), analyze=False)
    train_population(pop, epochs, accelerator="cpu")
    row = pop.results()[0]

    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    pl.seed_everything(seed, verbose=False)
    dm = GroupArithmeticDataModule(group, train_fraction=frac, split_seed=split)
    model = Li2Module(K=K, M=dm.M, optimizer=_li2module_optimizer(OptimizerSpec("adam"), lr, wd, None))
    monitor = StageMonitor(every_n_epochs=every)
    trainer = _trainer(epochs)
    trainer.callbacks.append(monitor)
    trainer.fit(model, dm)
    expected = [[t["epoch"], t["to"]] for t in monitor.transitions]
    assert len(expected) >= 3 and expected[-1][1] == "done"  # the run passes through the stages
    assert row["stage_transitions"] == expected
    assert row["stage_done_epoch"] == expected[-1][0] and row["stop_reason"] == "budget"
    assert row["stage_final"] == monitor.stage.label


# --- stops, frozen slots, refill ---------------------------------------------------------------------
def test_frozen_member_keeps_parameters_and_optimizer_state():
    snap = {}
    pop = None

    def sink(row, token):
        if token == 0:
            opt = pop.trainer.optimizers[0]
            snap["W"], snap["V"] = pop.W[0].detach().clone(), pop.V[0].detach().clone()
            snap["state"] = {(i, k): v[0].clone() for i, p in enumerate([pop.W, pop.V])
                             for k, v in opt.state[p].items() if v.dim() == 3}
            snap["epochs"] = row["epochs"]

    pop = PopulationModule("Z11", 16, members=make_members([0, 1], max_epochs=[5, 20], lr=1e-2, weight_decay=1e-2),
                           sink=sink, analyze=False)
    pop.configure_members(sink=sink, compact=False)
    train_population(pop, 20, accelerator="cpu")
    opt = pop.trainer.optimizers[0]
    assert snap["epochs"] == 5 and opt.member_step.tolist() == [5.0, 20.0]
    assert torch.equal(pop.W[0], snap["W"]) and torch.equal(pop.V[0], snap["V"])
    for (i, k), v in snap["state"].items():
        assert torch.equal(opt.state[[pop.W, pop.V][i]][k][0], v), k
    rows = pop.results()
    assert [r["stop_reason"] for r in rows] == ["budget", "budget"] and [r["epochs"] for r in rows] == [5, 20]


@pytest.mark.parametrize("spec", [OptimizerSpec("adam"), OptimizerSpec("muon", preset="li2")], ids=["adam", "muon"])
def test_refilled_member_equals_its_own_li2module_run(spec):
    """Slot 0: member A (10 epochs) stops, C takes the slot for its 20; B runs 30 beside them."""
    group, K = "Z11", 24
    A = MemberSettings(seed=0, split_seed=10, train_fraction=0.3, lr=1e-2, weight_decay=2e-4, max_epochs=10)
    B = MemberSettings(seed=1, split_seed=11, train_fraction=0.5, lr=3e-3, weight_decay=1e-3, max_epochs=30)
    C = MemberSettings(seed=7, split_seed=17, train_fraction=0.6, lr=5e-3, weight_decay=5e-3, max_epochs=20)
    queue = [(C, "C")]
    finished = []
    pop = PopulationModule(group, K, members=[A, B], optimizer=spec, analyze=False, tokens=["A", "B"],
                           policy=StopPolicy("off", check_every=5),
                           source=lambda: queue.pop() if queue else None,
                           sink=lambda row, token: finished.append((token, row["epochs"])))
    train_population(pop, 30, accelerator="cpu")
    assert finished == [("A", 10), ("B", 30), ("C", 20)] or finished == [("A", 10), ("C", 20), ("B", 30)]
    rows = {r["seed"]: r for r in pop.results()}
    for m, slot in ((A, None), (B, 1), (C, 0)):
        opt = _li2module_optimizer(spec, m.lr, m.weight_decay, m.lr if spec.name == "muon" else None)
        model, ref = _li2_run(group, K, m.seed, m.split_seed, m.train_fraction, opt, m.max_epochs)
        curves = rows[m.seed]["curves"]
        for key, values in ref.items():
            torch.testing.assert_close(torch.tensor(curves[key]), torch.tensor(values), atol=2e-5, rtol=2e-5,
                                       msg=lambda msg: f"member seed {m.seed}, {key}: {msg}")
        if slot is not None:
            torch.testing.assert_close(pop.W[slot].detach(), model.net.W.detach(), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(pop.V[slot].detach(), model.net.V.detach(), atol=1e-5, rtol=1e-4)


def test_stalled_member_stops_after_confirm_checks_and_done_member_at_done():
    """Z23 below p* without weight decay stalls; at 2 p* with decay it groks (docs/theory.md §7, §9)."""
    members = [MemberSettings(seed=0, p_star_multiplier=1.0, lr=1e-3, weight_decay=0.0),
               MemberSettings(seed=0, p_star_multiplier=2.0, lr=1e-3, weight_decay=1e-3)]
    pol = StopPolicy("stop-done-and-stalled", check_every=10, confirm=3)
    pop = PopulationModule("Z23", 128, members=members, policy=pol, analyze=False, eval_every=20)
    rows = train_population(pop, 600, accelerator="cpu")
    stalled, done = rows
    assert stalled["stop_reason"] == "stalled"
    # stalled at three consecutive checks: the stop comes (confirm - 1) checks after the first stalled one
    assert stalled["stop_epoch"] == stalled["stage_stalled_epoch"] + (pol.confirm - 1) * pol.check_every + 1
    assert stalled["epochs_to_test_acc_0.99"] is None and stalled["epochs"] == stalled["stop_epoch"]
    assert done["stop_reason"] == "done" and done["final_test_acc"] >= 0.99
    assert done["stop_epoch"] == done["stage_done_epoch"] + 1 and done["stage_final"] == "done"
    assert len(done["curves"]["val/acc"]) == done["epochs"]
    assert pop.member_epochs == stalled["epochs"] + done["epochs"]


def test_run_points_refills_and_reports_in_point_order():
    pts = [dict(group="Z11", K=24, lr=1e-2, weight_decay=1e-3, max_epochs=12, train_fraction=0.5, seed=s)
           for s in range(5)]
    seen = []
    rows = run_points(pts, "stop-done", 2, sink=lambda row, point: seen.append(point["seed"]))
    assert [r["seed"] for r in rows] == list(range(5)) and sorted(seen) == list(range(5))
    assert all(r["epochs"] == 12 and r["stop_reason"] in ("budget", "done") for r in rows)
    from li2_lightning.sweep import point_id

    assert [r["id"] for r in rows] == [point_id(p) for p in pts]


def test_policy_settings_are_validated():
    with pytest.raises(ValueError, match="mode"):
        StopPolicy("stop-everything")
    with pytest.raises(ValueError, match="confirm"):
        StopPolicy("stop-done", confirm=0)
    with pytest.raises(ValueError, match="bogus"):
        StopPolicy.from_dict({"mode": "off", "bogus": 1})
    p = StopPolicy.from_dict({"mode": "stop-done-and-stalled", "check_every": 10, "confirm": 3, "stall_align": 0.2})
    assert p.thresholds.stall_align == 0.2 and p.confirm == 3
    with pytest.raises(ValueError, match="complex"):
        PopulationModule("Z7", 4, complex_weights=True, policy="off")


def test_member_track_counts_consecutive_stalled_checks():
    pol = StopPolicy("stop-done-and-stalled", check_every=1, confirm=2, thresholds=Thresholds(window_epochs=1),
                     record_observations=True)
    t = MemberTrack()
    fit = dict(independence=0.01, purity=0.3, coverage=0.0, train_acc=1.0, val_acc=0.1, M=23.0)
    assert t.observe(Observation(epoch=0, a_G=0.9, **fit), pol) is None and t.stage is Stage.INDEPENDENT
    assert t.observe(Observation(epoch=1, a_G=0.1, **fit), pol) is None and t.stage is Stage.STALLED
    assert t.observe(Observation(epoch=2, a_G=0.1, **fit), pol) == "stalled"
    assert t.fields()["stage_stalled_epoch"] == 1 and t.fields()["stage_done_epoch"] is None
    assert [o["a_G"] for o in t.fields()["stage_observations"]] == [0.9, 0.1, 0.1]


# --- the sweep file's policy -------------------------------------------------------------------------
def test_sweep_with_policy_refills_and_tells_every_point(tmp_path):
    import json

    import yaml

    from li2_lightning.sweep import expand, load_sweep, point_id, run_sweep

    spec = {"results": str(tmp_path / "r.jsonl"), "population_size": 2, "accelerator": "cpu",
            "policy": {"mode": "stop-done-and-stalled", "check_every": 5, "confirm": 2},
            "fixed": {"group": "Z11", "K": 24, "max_epochs": 15, "lr": 1e-2, "train_fraction": 0.5},
            "grid": {"seed": [0, 1, 2, 3, 4]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    import logging

    levels = {n: logging.getLogger(n).level for n in ("lightning.pytorch", "lightning.fabric")}
    try:  # run_sweep quiets Lightning's loggers for the process; later tests read its INFO records
        assert run_sweep(path, progress=False) == 5  # one population of 2 slots took all 5 points
        rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert run_sweep(path, progress=False) == 0  # every point told: nothing to rerun
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    assert sorted(r["id"] for r in rows) == sorted(point_id(p) for p in expand(load_sweep(path)))
    assert all(r["stop_reason"] in ("done", "stalled", "budget") and r["epochs"] <= 15 for r in rows)
    assert all(len(r["curves"]["val/acc"]) == r["epochs"] and r["outcome"] == "finished" for r in rows)
    bad = dict(spec, policy={"mode": "stop-now"})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="policy"):
        load_sweep(path)
