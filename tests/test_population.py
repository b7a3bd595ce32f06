"""Population training: members match separate Li2Module runs; optimizers keep members independent."""

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module
from li2_lightning.optim import Muon
from li2_lightning.population import (MemberSettings, OptimizerSpec, PopulationModule, PopulationOptimizer,
                                       make_members, train_population)

warnings.filterwarnings("ignore")


class _Collect(Logger):
    """Keeps every logged row, keyed by epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict] = {}

    name, version = "collect", 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.setdefault(int(metrics.get("epoch", -1)), {}).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def _trainer(epochs, logger=False):
    return pl.Trainer(max_epochs=epochs, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
                      log_every_n_steps=1)


def _li2_run(group, K, seed, split_seed, train_fraction, opt, epochs, **model_kw):
    pl.seed_everything(seed, verbose=False)
    dm = GroupArithmeticDataModule(group, train_fraction=train_fraction, split_seed=split_seed)
    model = Li2Module(K=K, M=dm.M, optimizer=opt, **model_kw)
    log = _Collect()
    _trainer(epochs, log).fit(model, dm)
    curves = {k: [log.rows[e][k] for e in range(epochs)] for k in ("train/acc", "train/loss", "val/acc", "val/loss")}
    return model, curves


def _li2module_optimizer(spec, lr, wd, muon_lr):
    """The optimizer a separate Li2Module run gets, built from torch and li2_lightning.optim directly."""
    if spec.name == "muon":
        return lambda p: Muon(p, lr=muon_lr, adam_lr=lr, weight_decay=wd, preset=spec.preset, momentum=spec.momentum,
                              nesterov=spec.nesterov, ns_steps=spec.ns_steps, ns_dtype=spec.ns_dtype,
                              adam_decoupled=spec.adam_decoupled, adam_betas=spec.betas, adam_eps=spec.eps)
    if spec.name == "sgd":
        return lambda p: torch.optim.SGD(p, lr=lr, weight_decay=wd, momentum=spec.momentum or 0.0,
                                         nesterov=bool(spec.nesterov))
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return lambda p: cls(p, lr=lr, weight_decay=wd, betas=spec.betas, eps=spec.eps)


# (optimizer, members): every optimizer and Muon preset Li2Module accepts; Muon's with per-member muon_lr
CASES = [
    (OptimizerSpec("adam"), 8),
    (OptimizerSpec("adamw"), 8),
    (OptimizerSpec("sgd", momentum=0.9), 4),
    (OptimizerSpec("muon", preset="li2"), 4),
    (OptimizerSpec("muon", preset="keller"), 4),
    (OptimizerSpec("muon", preset="torch"), 4),  # bfloat16 Newton-Schulz, batched over members
    # every override Muon takes, away from the preset's defaults
    (OptimizerSpec("muon", preset="keller", momentum=0.9, nesterov=False, ns_steps=3, ns_dtype="bfloat16",
                   adam_decoupled=False, betas=(0.8, 0.99), eps=1e-6), 4),
    (OptimizerSpec("sgd", momentum=0.5, nesterov=True), 4),
]


@pytest.mark.parametrize("spec, S", CASES, ids=["adam", "adamw", "sgd", "li2", "keller", "torch", "keller_overrides",
                                                  "sgd_nesterov"])
def test_population_matches_separate_li2module_runs(spec, S):
    group, K, epochs = "Z11", 24, 25
    seeds = list(range(S))
    split_seeds = [10 + s for s in seeds]
    fractions = [0.3, 0.5] * (S // 2)
    wds = [0.0, 2e-4, 1e-3, 5e-3] * (S // 4)
    lrs = ([1e-2, 3e-3] if spec.name != "sgd" else [0.5, 0.2]) * (S // 2)
    muon_lrs = [2e-2, 5e-2, 1e-2, 3e-2][:S] if spec.name == "muon" else None
    members = make_members(seeds, split_seed=split_seeds, train_fraction=fractions, lr=lrs, weight_decay=wds,
                           muon_lr=muon_lrs)
    pop = PopulationModule(group, K, members=members, optimizer=spec, analyze=False)
    train_population(pop, epochs, accelerator="cpu")
    got = pop.lightning_metrics()
    for s in seeds:
        opt = _li2module_optimizer(spec, lrs[s], wds[s], muon_lrs[s] if muon_lrs else None)
        model, ref = _li2_run(group, K, seeds[s], split_seeds[s], fractions[s], opt, epochs)
        for key, values in ref.items():
            torch.testing.assert_close(got[key][:, s], torch.tensor(values), atol=2e-5, rtol=2e-5,
                                       msg=lambda m: f"member {s}, {key}: {m}")
        torch.testing.assert_close(pop.W[s].detach(), model.net.W.detach(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pop.V[s].detach(), model.net.V.detach(), atol=1e-5, rtol=1e-4)


# the model variants of docs/theory.md §10, shared by the members
VARIANTS = [dict(hidden_layers=3), dict(hidden_layers=2, residual=True, activation="relu"),
            dict(complex_weights=True), dict(top_layer="ridge", ridge_lambda=0.05),
            dict(hidden_layers=2, complex_weights=True, top_layer="ridge", ridge_lambda=0.05),
            dict(hidden_layers=3, V_init_scale=0.0)]


@pytest.mark.parametrize("variant", VARIANTS, ids=["deep", "residual_relu", "complex", "ridge", "complex_deep_ridge",
                                                   "deep_zero_init"])
def test_population_variants_match_separate_li2module_runs(variant):
    group, K, epochs, seeds = "Z11", 24, 15, [0, 1]
    variant = dict(variant)
    scale = variant.pop("V_init_scale", 1.0)
    members = make_members(seeds, split_seed=[10, 11], train_fraction=[0.3, 0.5], lr=[1e-2, 3e-3],
                           weight_decay=[2e-4, 1e-3], V_init_scale=scale)
    pop = PopulationModule(group, K, members=members, optimizer=OptimizerSpec("adam"), analyze=False, **variant)
    train_population(pop, epochs, accelerator="cpu")
    got = pop.lightning_metrics()
    for s in range(2):
        opt = _li2module_optimizer(OptimizerSpec("adam"), members[s].lr, members[s].weight_decay, None)
        model, ref = _li2_run(group, K, seeds[s], 10 + s, [0.3, 0.5][s], opt, epochs, V_init_scale=scale, **variant)
        for key, values in ref.items():
            torch.testing.assert_close(got[key][:, s], torch.tensor(values), atol=5e-5, rtol=5e-5,
                                       msg=lambda m: f"member {s}, {key}: {m}")
        for mine, theirs in zip([pop.W, *pop.U, pop.V], model.net.layer_weights()):
            torch.testing.assert_close(mine[s].detach(), theirs.detach(), atol=2e-5, rtol=1e-4)


def test_complex_population_refuses_muon():
    with pytest.raises(ValueError, match="muon"):
        PopulationModule("Z7", 4, complex_weights=True, optimizer=OptimizerSpec("muon"))


def test_initial_members_equal_li2module_init():
    pop = PopulationModule("Z7", 5, members=make_members([3, 9], V_init_scale=[1.0, 0.0]), analyze=False)
    for s, (seed, scale) in enumerate([(3, 1.0), (9, 0.0)]):
        pl.seed_everything(seed, verbose=False)
        ref = Li2Module(K=5, M=7, V_init_scale=scale)
        assert torch.equal(pop.W[s], ref.net.W) and torch.equal(pop.V[s], ref.net.V)


def _grad_step(rule, lr, wd, W, V, steps=3, **kw):
    Wp, Vp = torch.nn.Parameter(W.clone()), torch.nn.Parameter(V.clone())
    groups = [{"params": [Wp], "use_muon": True}, {"params": [Vp]}] if rule == "muon" else [{"params": [Wp, Vp]}]
    opt = PopulationOptimizer(groups, OptimizerSpec(rule, **kw), torch.tensor(lr), torch.tensor(wd))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        Wp.grad = torch.randn(Wp.shape, generator=g)
        Vp.grad = torch.randn(Vp.shape, generator=g)
        opt.step()
    return Wp.detach(), Vp.detach()


@pytest.mark.parametrize("rule,momentum", [("sgd", 0.0), ("sgd", 0.9), ("muon", 0.0)])
def test_optimizer_members_match_reference(rule, momentum):
    torch.manual_seed(1)
    W, V = torch.randn(3, 6, 10), torch.randn(3, 10, 5)
    lrs, wds = [0.1, 0.02, 0.0], [0.0, 0.1, 0.3]
    Wb, Vb = _grad_step(rule, lrs, wds, W, V, momentum=momentum or None)
    g = torch.Generator().manual_seed(0)
    grads = [(torch.randn(W.shape, generator=g), torch.randn(V.shape, generator=g)) for _ in range(3)]
    for s in range(3):
        w, v = torch.nn.Parameter(W[s].clone()), torch.nn.Parameter(V[s].clone())
        if rule == "sgd":
            opts = [torch.optim.SGD([w, v], lr=lrs[s], weight_decay=wds[s], momentum=momentum)]
        else:
            opts = [Muon([("W", w), ("V", v)], lr=lrs[s], weight_decay=wds[s], preset="li2")]
        for gw, gv in grads:
            w.grad, v.grad = gw[s].clone(), gv[s].clone()
            opts[0].step()
        torch.testing.assert_close(Wb[s], w.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(Vb[s], v.detach(), atol=1e-5, rtol=1e-5)


def test_results_table_and_early_stop():
    pop = PopulationModule("Z13", 64, members=make_members([0, 1], train_fraction=0.6, lr=2e-2, weight_decay=5e-3),
                           stop_at_test_acc=0.99, check_every=10)
    rows = train_population(pop, 400, accelerator="cpu")
    assert len(rows) == 2
    for r in rows:
        assert r["M"] == 13 and r["n_train"] == 13 * 13 - math.ceil(round(0.4 * 169, 9))
        assert r["final_test_acc"] >= 0.99 and r["stopped_early"] and r["epochs"] < 400
        assert r["epochs_to_train_acc_1"] is not None and r["epochs_to_test_acc_0.5"] <= r["epochs_to_test_acc_0.99"]
        assert 0 <= r["coverage"] <= 1 and r["energy_mean"] > 0


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="members"):
        make_members([0, 1], lr=[1e-3, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="optimizer"):
        OptimizerSpec("lion")
    with pytest.raises(ValueError, match="preset"):
        OptimizerSpec("muon", preset="adam")
    with pytest.raises(ValueError, match="momentum=1.5"):
        OptimizerSpec("sgd", momentum=1.5)
    with pytest.raises(ValueError, match="nesterov"):
        OptimizerSpec("sgd", nesterov=True)
    with pytest.raises(ValueError, match="ns_steps"):
        OptimizerSpec("muon", preset="li2", ns_steps=6)
    with pytest.raises(ValueError, match="seeds"):
        make_members([])
    with pytest.raises(ValueError, match="members"):
        PopulationModule("Z7", 4, members=[])
    with pytest.raises(ValueError, match="muon_lr"):
        PopulationModule("Z7", 4, members=[MemberSettings(muon_lr=0.1)], optimizer=OptimizerSpec("adam"))
    with pytest.raises(ValueError, match="lr"):
        PopulationModule("Z7", 4, members=[MemberSettings(lr=-1.0)])
