"""The Li2 callbacks on a toy LightningModule that is not Li2Module, checked against the pure functions."""

import csv
import glob
import os
import time

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader

from li2_lightning.analysis import energy as en
from li2_lightning.analysis import features as ft
from li2_lightning.analysis import gradients as gr
from li2_lightning.analysis.irreps import fourier_blocks
from li2_lightning.callbacks import EnergyMonitor, FeatureMonitor, GFStructureMonitor, StageMonitor
from li2_lightning.hooks import HookPoint
from li2_lightning.probe import Li2Probe

M, K, WD = 11, 24, 1e-3


class ToyModule(LightningModule):
    """A user's own two-layer net on Z_11 (own parameters, loss and data), exposing the Li2 probe
    and, with ``capture``, the hook point ``hook_F``."""

    def __init__(self, capture: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(2 * M, K, generator=g) * 0.3)
        self.V = nn.Parameter(torch.randn(K, M, generator=g) * 0.2)
        idx = torch.randperm(M * M, generator=torch.Generator().manual_seed(1))[:80]
        self.x = torch.stack([idx // M, idx % M], 1)
        self.y = (self.x[:, 0] + self.x[:, 1]) % M
        if capture:
            self.hook_F = HookPoint()

    def training_step(self, batch, batch_idx):
        x, y = batch
        F = (self.W[x[:, 0]] + self.W[M + x[:, 1]]) ** 2
        if hasattr(self, "hook_F"):
            F = self.hook_F(F)
        out = F @ self.V
        o = out - out.mean(1, keepdim=True)
        loss = ((o - (nn.functional.one_hot(y, M) - 1.0 / M)) ** 2).sum(1).mean()
        self.log("train/acc", (out.argmax(1) == y).float().mean(), on_epoch=True, on_step=False)
        return loss

    def li2_probe(self) -> Li2Probe:
        return Li2Probe(M=M, x=self.x, y=self.y, W=self.W.detach(), V=self.V.detach(), activation="sqr",
                        loss="mse", eta_eff=len(self.y) * WD / 2)

    def train_dataloader(self):
        return DataLoader([(self.x, self.y)], batch_size=None)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01, weight_decay=WD)


class PreStep(Callback):
    """Records W, V before each epoch's step (what that epoch's diagnostics describe)."""

    def __init__(self):
        self.W, self.V = {}, {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.W[trainer.current_epoch] = pl_module.W.detach().clone()
        self.V[trainer.current_epoch] = pl_module.V.detach().clone()


def _callbacks(**kw):
    return [GFStructureMonitor(heavy_every_n_epochs=2, **kw), EnergyMonitor(image_every_n_epochs=2),
            FeatureMonitor(image_every_n_epochs=2, purity_threshold=0.5), StageMonitor()]


def _fit(tmp_path, module, callbacks, loggers, epochs=3, **kw):
    kw = {"enable_checkpointing": False, **kw}
    trainer = Trainer(max_epochs=epochs, logger=loggers, callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), accelerator="cpu", **kw)
    trainer.fit(module)
    return trainer


def test_logged_values_match_the_pure_functions(tmp_path):
    rec = PreStep()
    cbs = _callbacks()
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    wandb_logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="li2-test")
    module = ToyModule()
    _fit(tmp_path, module, [rec] + cbs, [csv_logger, wandb_logger])
    last = 2
    W, V = rec.W[last].double(), rec.V[last].double()
    x, y = module.x, module.y
    F = gr.hidden(W, x, "sqr")
    G = gr.G_F_closed_form(F, V, y, "mse")
    gf, enrg, feat, stage = cbs
    h = gf.history[-1]
    assert h["epoch"] == last
    assert h["li2/gf/align"] == pytest.approx(gr.alignment(G, F, y, M), rel=1e-4)
    assert h["li2/gf/norm"] == pytest.approx(float(G.norm()), rel=1e-4)
    assert h["li2/gf/independence"] == pytest.approx(gr.independence_ratio(F), rel=1e-4)
    Vs = gr.V_fixed_point(F, y, M, len(y) * WD / 2, "mse")
    assert h["li2/V/r_V"] == pytest.approx(gr.relative_change(V, Vs), rel=1e-3)
    assert h["li2/W/step"] == pytest.approx(gr.relative_change(module.W.detach().double(), W), rel=1e-4)
    assert h["li2/W/movement"] == pytest.approx(gr.relative_change(W, rec.W[0].double()), rel=1e-4)
    E = en.normalized_energy(W, x, y, "sqr")
    assert enrg.history[-1]["li2/energy/mean"] == pytest.approx(float(E.mean()), rel=1e-4)
    b = fourier_blocks(M)
    ref_E = float(en.irrep_max_energies(x, y, b.Q, b.block_index)[1:].max())
    assert enrg.history[-1]["li2/energy/ref"] == pytest.approx(ref_E, rel=1e-6)
    power = ft.irrep_power(W, b)
    assert feat.history[-1]["li2/feat/purity_mean"] == pytest.approx(float(ft.purity(power).mean()), rel=1e-4)
    assert feat.history[-1]["li2/feat/coverage"] == pytest.approx(ft.coverage(power, 0.5))
    # the CSV rows hold the same numbers, keyed by epoch
    rows = list(csv.DictReader(open(os.path.join(csv_logger.log_dir, "metrics.csv"))))
    got = [float(r["li2/gf/align"]) for r in rows if r.get("li2/gf/align")]
    assert got == pytest.approx([e["li2/gf/align"] for e in gf.history])
    assert any(r.get("stage/index") for r in rows)
    # PNGs next to the CSV run; the W&B run has scalars, histogram, heatmap
    pngs = {os.path.basename(p) for p in glob.glob(os.path.join(csv_logger.log_dir, "li2", "*.png"))}
    assert {"irrep_power_epoch00000.png", "irrep_power_epoch00002.png", "energy_hist_epoch00002.png"} <= pngs
    from li2_lightning.wandb_offline import read_history

    wandb_logger.experiment.finish()
    for _ in range(100):  # on a loaded machine the service may still be writing the tail
        hist = read_history(str(tmp_path))
        if any("stage/index" in r for r in hist):
            break
        time.sleep(0.1)
    keys = set().union(*hist)
    assert {"li2/gf/align", "li2/energy/hist/_type", "li2/feat/irrep_power/_type", "stage/index"} <= keys
    aligns = [r["li2/gf/align"] for r in hist if "li2/gf/align" in r]
    assert aligns == pytest.approx([e["li2/gf/align"] for e in gf.history])


def test_captured_F_and_G_F_are_used_without_a_forward_pass(tmp_path, monkeypatch):
    plain, captured = _callbacks(), _callbacks()
    _fit(tmp_path, ToyModule(capture=False), plain, False)
    calls = []
    real_hidden = gr.hidden
    monkeypatch.setattr(gr, "hidden", lambda *a, **k: calls.append(1) or real_hidden(*a, **k))
    _fit(tmp_path, ToyModule(capture=True), captured, False)
    assert calls == []  # no recomputation of F: the captured step's F and G_F were used
    for a, b in zip(plain[0].history, captured[0].history):
        assert a.keys() == b.keys()
        for k in a.keys() & {"li2/gf/align", "li2/gf/norm"}:
            assert a[k] == pytest.approx(b[k], rel=1e-5)


def test_state_dict_round_trip_and_resume(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    cbs = _callbacks()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    _fit(tmp_path, ToyModule(), cbs + [ckpt], False, epochs=2, enable_checkpointing=True)
    for cb in cbs:
        fresh = type(cb)()
        fresh.load_state_dict(cb.state_dict())
        assert fresh.state_dict().keys() == cb.state_dict().keys()
        assert getattr(fresh, "history", None) == getattr(cb, "history", None)
    assert cbs[3].state_dict()["stage"] == cbs[3].stage.label
    resumed = _callbacks()
    trainer = Trainer(max_epochs=4, logger=False, callbacks=resumed, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), enable_checkpointing=False)
    trainer.fit(ToyModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in resumed[0].history] == [0, 1, 2, 3]
    assert torch.equal(resumed[0]._W0, cbs[0]._W0)  # movement still measured from the first W
    assert resumed[1].E_ref == cbs[1].E_ref


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="every_n_epochs"):
        GFStructureMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="heavy_every_n_epochs"):
        GFStructureMonitor(heavy_every_n_epochs=-1)
    with pytest.raises(ValueError, match="purity_threshold"):
        FeatureMonitor(purity_threshold=1.5)
    with pytest.raises(ValueError, match="image_every_n_epochs"):
        EnergyMonitor(image_every_n_epochs=2.5)
    with pytest.raises(ValueError, match="align_high"):
        StageMonitor(align_high=2)
    with pytest.raises(ValueError, match="window_epochs"):
        StageMonitor(window_epochs=0)


def test_module_without_probe_gets_a_clear_error(tmp_path):
    class NoProbe(ToyModule):
        li2_probe = None

    with pytest.raises(ValueError, match="li2_probe"):
        _fit(tmp_path, NoProbe(), [FeatureMonitor()], False, epochs=1)


def test_every_n_epochs_and_no_logger(tmp_path):
    cbs = [GFStructureMonitor(every_n_epochs=2, heavy_every_n_epochs=0),
           FeatureMonitor(every_n_epochs=3, image_every_n_epochs=0)]
    _fit(tmp_path, ToyModule(), cbs, False, epochs=5)
    assert [h["epoch"] for h in cbs[0].history] == [0, 2, 4]
    assert [h["epoch"] for h in cbs[1].history] == [0, 3, 4]
    assert "li2/V/r_V" not in cbs[0].history[0]
    assert not glob.glob(str(tmp_path / "**" / "*.png"), recursive=True)


@pytest.mark.parametrize("loss,activation", [("ce", "relu"), ("mse", "silu")])
def test_li2module_other_losses_and_activations(tmp_path, loss, activation):
    """Cross-entropy (no η: no r_V) and a non-homogeneous σ run through the recompute path too."""
    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    torch.manual_seed(0)
    cbs = _callbacks()
    trainer = Trainer(max_epochs=3, logger=False, callbacks=cbs, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(Li2Module(K=32, loss=loss, activation=activation),
                GroupArithmeticDataModule("Z11", train_fraction=0.5))
    h = cbs[0].history[-1]
    assert ("li2/V/r_V" in h) == (loss == "mse")
    assert -1 <= h["li2/gf/align"] <= 1 and h["li2/gf/norm"] > 0
    assert cbs[1].history[-1]["li2/energy/mean"] > 0


def test_two_instances_keep_separate_state_in_a_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    every1, every2 = FeatureMonitor(purity_threshold=0.5), FeatureMonitor(every_n_epochs=2, purity_threshold=0.5)
    assert every1.state_key != every2.state_key and "every_n_epochs" in every2.state_key
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    _fit(tmp_path, ToyModule(), [every1, every2, ckpt], False, epochs=4, enable_checkpointing=True)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert [h["epoch"] for h in state[every1.state_key]["history"]] == [0, 1, 2, 3]
    assert [h["epoch"] for h in state[every2.state_key]["history"]] == [0, 2, 3]
    again1, again2 = FeatureMonitor(purity_threshold=0.5), FeatureMonitor(every_n_epochs=2, purity_threshold=0.5)
    trainer = Trainer(max_epochs=5, logger=False, callbacks=[again2, again1], enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), enable_checkpointing=False)
    trainer.fit(ToyModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in again1.history] == [0, 1, 2, 3, 4]
    assert [h["epoch"] for h in again2.history] == [0, 2, 3, 4]


class _Logged(Callback):
    """Collects trainer.callback_metrics at the end of fit (after every other callback's hook)."""

    def on_train_epoch_end(self, trainer, pl_module):
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("capture", [False, True])
def test_callbacks_in_any_order_log_the_same_values(tmp_path, capture):
    runs = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        cbs = _callbacks()
        last = _Logged()
        _fit(tmp_path, ToyModule(capture=capture), [cbs[i] for i in order] + [last], False, epochs=3)
        runs.append((last.metrics, [cb.history for cb in cbs]))
    first = runs[0]
    assert any(k.startswith("li2/gf/") for k in first[0]) and "stage/index" in first[0]
    for metrics, histories in runs[1:]:
        assert metrics.keys() == first[0].keys()
        for k, v in metrics.items():
            assert v == pytest.approx(first[0][k], rel=1e-6, nan_ok=True), k
        assert histories[0] == first[1][0] or all(
            h == pytest.approx(g, rel=1e-6, nan_ok=True) for h, g in zip(histories[0], first[1][0]))


def test_early_stopping_and_checkpoint_monitor_a_li2_scalar(tmp_path):
    """EarlyStopping(stopping_threshold) on li2/feat/coverage stops a real run; ModelCheckpoint keeps the best."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    pl.seed_everything(1, verbose=False)
    feat = FeatureMonitor(image_every_n_epochs=0)
    stop = EarlyStopping(monitor="li2/feat/coverage", mode="max", stopping_threshold=0.5, patience=1000)
    best = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="li2/feat/coverage", mode="max",
                           save_on_train_epoch_end=True)
    model = Li2Module(K=256, optimizer=lambda ps: torch.optim.Adam([p for _, p in ps], lr=5e-3, weight_decay=2e-3))
    trainer = Trainer(max_epochs=200, logger=False, callbacks=[feat, stop, best], enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(model, GroupArithmeticDataModule("Z23", train_fraction=0.6, split_seed=1))
    cov = [h["li2/feat/coverage"] for h in feat.history]
    first = next(i for i, c in enumerate(cov) if c > 0.5)  # strict comparison, as EarlyStopping's
    assert trainer.current_epoch == first + 1 < 200 and len(cov) == first + 1  # stopped at that epoch
    assert float(best.best_model_score) == pytest.approx(max(cov))
    assert f"epoch={cov.index(max(cov))}" in best.best_model_path


def test_wandb_rows_have_each_diagnostic_once_per_epoch_at_the_step_of_val_acc(tmp_path):
    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module
    from li2_lightning.wandb_offline import read_history

    torch.manual_seed(0)
    cbs = [GFStructureMonitor(heavy_every_n_epochs=0), EnergyMonitor(image_every_n_epochs=0),
           FeatureMonitor(image_every_n_epochs=0), StageMonitor()]
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="li2-test")
    epochs = 4
    trainer = Trainer(max_epochs=epochs, logger=logger, callbacks=cbs, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(tmp_path))
    trainer.fit(Li2Module(K=32), GroupArithmeticDataModule("Z11", train_fraction=0.5))
    logger.experiment.finish()
    keys = {k for cb in cbs for h in cb.history for k in h if k != "epoch"}
    assert {"li2/gf/align", "li2/energy/ratio_mean", "li2/feat/coverage", "stage/index"} <= keys
    for _ in range(100):  # the W&B service may still be writing the tail
        rows = read_history(str(tmp_path))
        if sum("li2/gf/align" in r for r in rows) == epochs:
            break
        time.sleep(0.1)
    val_steps = [r["trainer/global_step"] for r in rows if "val/acc" in r]
    assert len(val_steps) == epochs
    # the detail keys (detail_every_n_epochs 10) at epochs 0 and the last, the others every epoch
    detail = {"li2/gf/uncovered_share", "li2/W/movement", "li2/energy/median", "li2/feat/n_covered"}
    assert detail <= keys
    for key in keys:
        steps = [r["trainer/global_step"] for r in rows if key in r]
        expect = [val_steps[0], val_steps[-1]] if key in detail else val_steps
        if key in detail or key in ("li2/gf/align", "li2/energy/ratio_mean", "li2/feat/coverage", "stage/index"):
            assert steps == expect, key  # once per logged epoch, at the step of that epoch's val/acc
    li2_rows = [r for r in rows if "li2/gf/align" in r]
    assert all("train/acc" in r and "stage/index" in r for r in li2_rows)  # one row per epoch
    assert keys <= li2_rows[0].keys() and keys <= li2_rows[-1].keys()
    assert [r["epoch"] for r in li2_rows] == list(range(epochs))


def test_per_block_energy_ratio_is_one_on_a_two_dimensional_irrep_maximum_of_D5():
    from li2_lightning.analysis.irreps import real_blocks
    from li2_lightning.callbacks.snapshot import Snapshot
    from li2_lightning.groups import make_group

    g = make_group("D5")
    Mg = g.table.shape[0]
    x = torch.cartesian_prod(torch.arange(Mg), torch.arange(Mg))
    y = g.table[x[:, 0], x[:, 1]]
    b = real_blocks(g.table)
    block = next(i for i, d in enumerate(b.dims) if d == 2)
    Qb = b.Q[:, b.block_slices[block]]  # (M, 4) real basis of the block
    Z = torch.zeros_like(Qb)
    basis = torch.cat([torch.cat([Qb, Z], 1), torch.cat([Z, Qb], 1)], 0)  # (2M, 8): both halves in the block
    starts = torch.randn(2 * Mg, 256, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = en.ascend_energy(starts, x, y, "sqr", steps=400, lr=0.5, basis=basis)  # brute force: 256 starts
    E = en.energy(w, x, y)
    W = w[:, E.argmax()].unsqueeze(1) * 3.0  # one node on the block's maximum (any norm)
    W = torch.cat([W, torch.randn(2 * Mg, 1, dtype=torch.float64)], 1)  # and one generic node
    probe = Li2Probe(M=Mg, x=x, y=y, W=W, V=torch.zeros(2, Mg, dtype=torch.float64), activation="sqr",
                     group=g)
    monitor = EnergyMonitor()
    E_block = monitor.block_energies(probe)
    assert float(E_block[block]) == pytest.approx(float(E.max()), rel=1e-6)
    monitor.E_block, monitor.E_ref = [float(e) for e in E_block], float(E_block[1:].max())
    s = Snapshot(probe)
    assert int(s.dominant[0]) == block
    ratio = monitor.block_ratio(s)
    assert float(ratio[0]) == pytest.approx(1.0, abs=1e-6)
    m = monitor.compute(s, None)
    assert m["li2/energy/ratio_max"] == pytest.approx(max(1.0, float(ratio[1])), abs=1e-6)
    assert m["li2/energy/ratio_group_max"] == pytest.approx(float(s.energy.max()) / monitor.E_ref)


def test_a_missing_metric_key_is_warned_about_once(tmp_path):
    from li2_lightning.callbacks import AccuracyMilestones

    cbs = [StageMonitor(val_acc_key="val_acc"), AccuracyMilestones(metrics=["val/accuracy"], thresholds=[0.5])]
    with pytest.warns(UserWarning) as record:
        _fit(tmp_path, ToyModule(), cbs, False, epochs=3)
    msgs = [str(w.message) for w in record]
    assert sum("val_acc_key='val_acc'" in m for m in msgs) == 1
    assert sum("metrics='val/accuracy'" in m for m in msgs) == 1
    assert not any("train_acc_key" in m for m in msgs)  # ToyModule logs train/acc
