"""The stage rule on synthetic observable sequences, and on real Li2Module runs."""

import torch

from li2_lightning.callbacks import StageMonitor
from li2_lightning.stages import Stage


def _run(monitor, seq):
    for epoch, obs in seq:
        monitor.update(epoch, {"M": 71.0, "independence": 0.03, **obs})
    return [(t["to"], t["epoch"]) for t in monitor.transitions]


def _grokking():
    """Like the Fig. 3 wd 2e-4 run: fit, a_G plateau, a_G dip while test acc rises, coverage."""
    seq = []
    for e in range(0, 200, 5):
        a = min(0.9, e / 25) if e < 60 else max(0.5, 0.9 - (e - 60) / 60)
        seq.append((e, {"a_G": a, "train_acc": min(1.0, e / 15), "purity": 0.09 + 0.002 * e,
                        "val_acc": 0.0 if e < 70 else min(1.0, (e - 70) / 60),
                        "coverage": 0.0 if e < 130 else min(1.0, (e - 125) / 50)}))
    return seq


def test_each_transition_in_order():
    assert _run(StageMonitor(), _grokking()) == [("independent", 20), ("interactive", 80), ("done", 175)]


def test_wd0_like_run_stalls_without_interactive_stage():
    seq = []
    for e in range(0, 300, 5):
        a = min(0.9, e / 25) if e < 40 else max(0.0, 0.9 - (e - 40) / 50)
        seq.append((e, {"a_G": a, "train_acc": min(1.0, e / 15), "purity": 0.09 + 0.0015 * min(e, 90),
                        "val_acc": 0.02, "coverage": 0.0}))
    m = StageMonitor()
    assert _run(m, seq) == [("independent", 20), ("stalled", 110)]
    assert m.stage is Stage.STALLED
    t = m.transitions[-1]
    assert t["a_G"] <= 0.3 * t["peak_a_G"] and abs(t["delta_purity"]) < 0.005


def test_stalled_run_recovers_when_alignment_and_purity_return():
    seq = [(e, {"a_G": min(0.9, e / 20), "train_acc": 1.0, "purity": 0.1, "val_acc": 0.0, "coverage": 0.0})
           for e in range(0, 40, 5)]
    seq += [(e, {"a_G": 0.1, "train_acc": 1.0, "purity": 0.1, "val_acc": 0.0, "coverage": 0.0})
            for e in range(40, 80, 5)]
    seq += [(e, {"a_G": 0.6, "train_acc": 1.0, "purity": 0.1 + 0.002 * (e - 80), "val_acc": 0.0,
                 "coverage": 0.0}) for e in range(80, 120, 5)]
    m = StageMonitor()
    assert _run(m, seq) == [("independent", 15), ("stalled", 40), ("independent", 85)]


def test_thresholds_are_settings():
    late = StageMonitor(fit_train_acc=1.0, align_high=0.85)
    assert _run(late, _grokking())[0] == ("independent", 25)
    no_val = [(e, {**obs, "val_acc": None}) for e, obs in _grokking()]
    assert _run(StageMonitor(), no_val)[-1] == ("done", 175)  # coverage alone decides without validation


def test_done_is_final_and_state_round_trips():
    m = StageMonitor()
    _run(m, _grokking())
    state = m.state_dict()
    m2 = StageMonitor()
    m2.load_state_dict(state)
    assert m2.stage is Stage.DONE and m2.transitions == m.transitions
    assert m2.update(300, {"a_G": 0.0, "purity": 0.0, "coverage": 0.0, "train_acc": 0.0, "val_acc": 0.0,
                           "independence": 1.0, "M": 71.0}) is None


def _li2_run(wd, epochs, tmp_path, logger=False):
    import lightning.pytorch as pl

    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    pl.seed_everything(1, verbose=False)
    dm = GroupArithmeticDataModule("Z23", train_fraction=0.6, split_seed=1)
    model = Li2Module(K=256, optimizer=lambda ps: torch.optim.Adam([p for _, p in ps], lr=5e-3, weight_decay=wd))
    stage = StageMonitor()
    trainer = pl.Trainer(max_epochs=epochs, logger=logger, callbacks=[stage], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    return stage, float(trainer.callback_metrics["val/acc"])


def test_li2module_stages_appear_in_order(tmp_path):
    """Z23, K 256, p 0.6, Adam 5e-3, wd 2e-3: lazy → independent → interactive → done (~2 s)."""
    import time

    from lightning.pytorch.loggers import WandbLogger

    from li2_lightning.wandb_offline import read_history, read_summary

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="li2-test")
    stage, val = _li2_run(2e-3, 120, tmp_path, logger)
    assert [t["to"] for t in stage.transitions] == ["independent", "interactive", "done"]
    ind, inter, done = (t["epoch"] for t in stage.transitions)
    assert ind < inter < done and val > 0.99
    assert stage.transitions[0]["val_acc"] < 0.1  # test accuracy rises only after independent learning starts
    logger.experiment.finish()
    for _ in range(100):  # the W&B service may still be writing the tail
        summary = read_summary(str(tmp_path))
        if summary.get("stage/current") == "done":
            break
        time.sleep(0.1)
    assert summary["stage/done_epoch"] == done and summary["stage/independent_epoch"] == ind
    rows = read_history(str(tmp_path))
    assert any("stage/transitions/_type" in r for r in rows)
    assert [r["stage/done_epoch"] for r in rows if "stage/done_epoch" in r] == [done]


def test_li2module_without_weight_decay_has_no_interactive_stage(tmp_path):
    stage, val = _li2_run(0.0, 200, tmp_path)
    assert "interactive" not in [t["to"] for t in stage.transitions] and val < 0.5
    assert stage.stage is Stage.STALLED


def test_signal_is_validated_and_weight_decay_read_from_the_optimizers():
    import pytest

    with pytest.raises(ValueError, match="signal='ridge'"):
        StageMonitor(signal="ridge")

    class T:
        def __init__(self, *opts):
            self.optimizers = list(opts)

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert StageMonitor.weight_decay(T(torch.optim.AdamW(p, weight_decay=0.0))) is False
    assert StageMonitor.weight_decay(T(torch.optim.AdamW(p))) is True  # AdamW's default 0.01
    assert StageMonitor.weight_decay(T(torch.optim.Adam(p, weight_decay=2e-4))) is True
    assert StageMonitor.weight_decay(T(torch.optim.SGD(p, lr=0.1))) is False

    class NoDecayKey:  # an optimizer whose groups do not say
        param_groups = [{"params": p, "lr": 0.1}]

    assert StageMonitor.weight_decay(T(NoDecayKey())) is None
    # decoupled decay (AdamW, torch's Muon) moves the MSE off the theory's signal; wd 0 does not
    assert StageMonitor.decoupled_decay(T(torch.optim.AdamW(p, weight_decay=0.1)))
    assert not StageMonitor.decoupled_decay(T(torch.optim.AdamW(p, weight_decay=0.0)))
    assert not StageMonitor.decoupled_decay(T(torch.optim.Adam(p, weight_decay=2e-4)))
    assert not StageMonitor.decoupled_decay(T(torch.optim.SGD(p, lr=0.1, weight_decay=1e-3)))
    assert StageMonitor.decoupled_decay(T(torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))], weight_decay=0.1)))
    assert not StageMonitor.decoupled_decay(T(NoDecayKey()))


def test_cross_entropy_run_uses_the_feature_signals_and_says_so_once(caplog):
    """A user's CE + AdamW module (a_G stays ~0.85 through grokking): independent, then interactive
    once test accuracy leaves chance while purity rises; the switch is announced once (~4 s)."""
    import lightning.pytorch as pl
    from test_stage_sequences import UserNet

    pl.seed_everything(1, verbose=False)
    stage = StageMonitor()
    trainer = pl.Trainer(max_epochs=170, logger=False, callbacks=[stage], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with caplog.at_level("INFO"):
        trainer.fit(UserNet(train_fraction=0.7, lr=3e-3, weight_decay=1.0))
    said = [r.getMessage() for r in caplog.records if "StageMonitor: the loss is 'ce'" in r.getMessage()]
    assert len(said) == 1
    assert [t["to"] for t in stage.transitions] == ["independent", "interactive"]
    t = stage.transitions[1]
    chance = 1 / 23
    assert t["val_acc"] >= chance + 0.1 * (1 - chance) and t["a_G"] > 0.7  # a_G did not fall
    state = stage.state_dict()
    assert state["a_G_signal"] is False and state["val_history"]
    again = StageMonitor()
    again.load_state_dict(state)
    assert again.memory.val_history == stage.memory.val_history and again._a_G_signal is False
