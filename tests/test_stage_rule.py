"""The pure stage rule: each predicate on hand-made observations, and next_stage on sequences."""

import math

import pytest

from li2_lightning.stages import (Memory, Observation, Stage, Thresholds, delta_purity, enters_independent,
                                  enters_interactive, features_matter, is_done, is_stalled, next_stage, resumes)

TH = Thresholds()


def obs(**kw):
    base = dict(epoch=0, a_G=0.0, independence=0.03, purity=0.1, coverage=0.0, train_acc=0.0, val_acc=0.0, M=71.0)
    return Observation(**{**base, **kw})


def test_is_done_needs_coverage_and_test_accuracy_when_validated():
    assert is_done(obs(coverage=1.0, val_acc=0.99), TH)
    assert not is_done(obs(coverage=1.0, val_acc=0.98), TH)
    assert not is_done(obs(coverage=0.97, val_acc=1.0), TH)
    assert is_done(obs(coverage=1.0, val_acc=None), TH)  # no validation: coverage decides


def test_is_stalled_needs_a_past_peak_a_fall_and_flat_purity():
    assert is_stalled(obs(a_G=0.2), peak=0.9, dp=0.001, th=TH)
    assert not is_stalled(obs(a_G=0.2), peak=0.6, dp=0.001, th=TH)  # a_G never reached align_high
    assert not is_stalled(obs(a_G=0.28), peak=0.9, dp=0.001, th=TH)  # 0.28 > 0.3 · 0.9
    assert is_stalled(obs(a_G=0.27), peak=0.9, dp=-0.004, th=TH)
    assert not is_stalled(obs(a_G=0.2), peak=0.9, dp=0.005, th=TH)  # purity still moving
    assert not is_stalled(obs(a_G=0.2), peak=0.9, dp=None, th=TH)  # no window yet


def test_resumes_when_alignment_and_purity_come_back():
    assert resumes(obs(a_G=0.3), peak=0.9, dp=0.005, th=TH)
    assert not resumes(obs(a_G=0.27), peak=0.9, dp=0.01, th=TH)
    assert not resumes(obs(a_G=0.6), peak=0.9, dp=0.004, th=TH)
    assert not resumes(obs(a_G=0.6), peak=0.9, dp=None, th=TH)


def test_enters_independent_needs_fit_signal_and_independence():
    assert enters_independent(obs(train_acc=0.99, a_G=0.7, independence=0.1), TH)
    assert not enters_independent(obs(train_acc=0.98, a_G=0.9), TH)
    assert not enters_independent(obs(train_acc=1.0, a_G=0.69), TH)
    assert not enters_independent(obs(train_acc=1.0, a_G=0.9, independence=0.11), TH)
    assert not enters_independent(obs(train_acc=None, a_G=0.9), TH)


def test_enters_interactive_needs_drop_rising_purity_and_features_that_matter():
    chance = 1 / 71
    gain = chance + 0.1 * (1 - chance)
    assert enters_interactive(obs(a_G=0.81, val_acc=gain + 1e-9), peak=0.9, dp=0.005, th=TH)
    assert not enters_interactive(obs(a_G=0.82, val_acc=1.0), peak=0.9, dp=0.01, th=TH)  # no drop
    assert not enters_interactive(obs(a_G=0.5, val_acc=1.0), peak=0.9, dp=0.004, th=TH)  # purity flat
    assert not enters_interactive(obs(a_G=0.5, val_acc=gain - 1e-9), peak=0.9, dp=0.01, th=TH)  # wd-0 like
    assert enters_interactive(obs(a_G=0.5, val_acc=None, coverage=0.03), peak=0.9, dp=0.01, th=TH)


def test_delta_purity_uses_the_latest_point_a_window_back():
    hist = ((0, 0.1), (5, 0.2), (10, 0.3))
    assert delta_purity(hist, 25, 0.5, 20) == pytest.approx(0.3)  # against epoch 5
    assert delta_purity(hist, 19, 0.5, 20) is None


def _run(seq, th=TH, stage=Stage.LAZY, memory=None):
    memory = memory or Memory()
    out = []
    for o in seq:
        new, memory = next_stage(stage, o, memory, th)
        if new != stage:
            out.append((new, o.epoch))
        stage = new
    return out, stage, memory


def test_next_stage_does_not_change_its_arguments():
    m = Memory()
    o = obs(epoch=3, a_G=0.5)
    stage, m2 = next_stage(Stage.LAZY, o, m, TH)
    assert m == Memory() and m2.peak_a_G == 0.5 and m2.purity_history == ((3, 0.1),)


def test_wd0_stall_then_resume_to_the_stage_it_stalled_in():
    seq = [obs(epoch=e, a_G=min(0.9, e / 20), train_acc=1.0) for e in range(0, 40, 5)]
    seq += [obs(epoch=e, a_G=0.1, train_acc=1.0) for e in range(40, 80, 5)]
    seq += [obs(epoch=e, a_G=0.6, train_acc=1.0, purity=0.1 + 0.002 * (e - 80)) for e in range(80, 120, 5)]
    trans, stage, memory = _run(seq)
    assert trans == [(Stage.INDEPENDENT, 15), (Stage.STALLED, 40), (Stage.INDEPENDENT, 85)]
    assert memory.resume is Stage.INDEPENDENT and memory.peak_a_G == 0.9


def test_stall_from_lazy_resumes_lazy():
    seq = [obs(epoch=0, a_G=0.9, independence=0.5), obs(epoch=25, a_G=0.1, independence=0.5),
           obs(epoch=50, a_G=0.5, independence=0.5, purity=0.2)]
    trans, _, _ = _run(seq)
    assert trans == [(Stage.STALLED, 25), (Stage.LAZY, 50)]


@pytest.mark.parametrize("start", [Stage.LAZY, Stage.INDEPENDENT, Stage.INTERACTIVE, Stage.STALLED])
def test_done_from_any_stage_and_final(start):
    stage, memory = next_stage(start, obs(epoch=7, coverage=1.0, val_acc=1.0), Memory(), TH)
    assert stage is Stage.DONE
    stage, memory = next_stage(stage, obs(epoch=8, a_G=0.0, coverage=0.0, val_acc=0.0), memory, TH)
    assert stage is Stage.DONE and memory.purity_history[-1] == (8, 0.1)


def test_thresholds_validate_and_stage_labels_round_trip():
    with pytest.raises(ValueError, match="align_high=2"):
        Thresholds(align_high=2)
    with pytest.raises(ValueError, match="window_epochs=0"):
        Thresholds(window_epochs=0)
    with pytest.raises(ValueError, match="independence_max"):
        Thresholds(independence_max=0)
    assert [int(s) for s in (Stage.LAZY, Stage.INDEPENDENT, Stage.INTERACTIVE, Stage.DONE, Stage.STALLED)] == \
        [0, 1, 2, 3, -1]
    assert all(Stage.from_label(s.label) is s for s in Stage)
    with pytest.raises(ValueError, match="stage='grokked'"):
        Stage.from_label("grokked")
    assert obs(M=None).chance == 0.0 and obs(M=4.0).chance == 0.25 and math.isinf(Memory().peak_a_G)


# --- the feature signals (cross-entropy: a_G's fall does not apply) --------------------------
def fobs(**kw):
    return obs(**{"a_G_signal": False, "M": 23.0, **kw})


CHANCE23 = 1 / 23
GAIN23 = CHANCE23 + 0.1 * (1 - CHANCE23)  # test accuracy at which the features matter
FLAT23 = 0.1 * (1 - CHANCE23) / 10  # test accuracy change counted as flat over a window


def test_features_matter_reads_test_accuracy_and_coverage_only_without_it():
    assert features_matter(fobs(val_acc=GAIN23 + 1e-9), TH)
    assert not features_matter(fobs(val_acc=GAIN23 - 1e-9, coverage=0.09), TH)  # one covered irrep, test at chance
    assert features_matter(fobs(val_acc=None, coverage=0.09), TH)
    assert not features_matter(fobs(val_acc=None, coverage=0.0), TH)


def test_feature_signals_done_on_test_accuracy_without_full_coverage():
    assert is_done(fobs(coverage=0.8, val_acc=0.99), TH)
    assert not is_done(fobs(coverage=1.0, val_acc=0.98), TH)
    assert not is_done(obs(coverage=0.8, val_acc=1.0), TH)  # the theory's rule still needs coverage
    assert is_done(fobs(coverage=1.0, val_acc=None), TH) and not is_done(fobs(coverage=0.9, val_acc=None), TH)


def test_feature_signals_interactive_needs_no_a_G_drop():
    assert enters_interactive(fobs(a_G=0.9, val_acc=GAIN23 + 1e-9), peak=0.9, dp=1e-4, th=TH)
    assert not enters_interactive(fobs(a_G=0.9, val_acc=GAIN23 + 1e-9), peak=0.9, dp=0.0, th=TH)  # purity not rising
    assert not enters_interactive(fobs(a_G=0.5, val_acc=GAIN23 - 1e-9), peak=0.9, dp=0.05, th=TH)
    assert not enters_interactive(obs(a_G=0.9, val_acc=1.0), peak=0.9, dp=0.05, th=TH)  # theory's rule: no drop


def test_feature_signals_stall_only_without_weight_decay_and_with_nothing_moving():
    base = dict(train_acc=1.0, a_G=0.85, val_acc=0.05)
    assert is_stalled(fobs(weight_decay=False, **base), peak=0.9, dp=0.001, th=TH, dval=FLAT23 - 1e-9)
    assert not is_stalled(fobs(weight_decay=None, **base), peak=0.9, dp=0.001, th=TH, dval=0.0)  # unknown
    assert not is_stalled(fobs(weight_decay=True, **base), peak=0.9, dp=0.001, th=TH, dval=0.0)
    assert not is_stalled(fobs(weight_decay=False, **base), peak=0.9, dp=0.005, th=TH, dval=0.0)  # purity moves
    assert not is_stalled(fobs(weight_decay=False, **base), peak=0.9, dp=0.001, th=TH, dval=FLAT23)  # test acc moves
    assert not is_stalled(fobs(weight_decay=False, **{**base, "train_acc": 0.9}), peak=0.9, dp=0.0, th=TH, dval=0.0)
    assert is_stalled(fobs(weight_decay=False, **{**base, "val_acc": None}), peak=0.9, dp=0.0, th=TH, dval=None)


def test_feature_signals_resume_on_purity_or_a_test_accuracy_jump():
    assert resumes(fobs(a_G=0.85), peak=0.9, dp=0.005, th=TH, dval=0.0)
    assert resumes(fobs(a_G=0.85), peak=0.9, dp=0.0, th=TH, dval=5 * FLAT23 + 1e-9)
    assert not resumes(fobs(a_G=0.85), peak=0.9, dp=0.0, th=TH, dval=5 * FLAT23 - 1e-6)  # a test sample or two


def test_next_stage_keeps_a_test_accuracy_window():
    m = Memory()
    for e in range(0, 60, 5):
        _, m = next_stage(Stage.LAZY, fobs(epoch=e, val_acc=0.01 * e), m, TH)
    assert m.val_history[0][0] >= 55 - 2 * TH.window_epochs and m.val_history[-1] == (55, pytest.approx(0.55))
    assert m.delta_val_acc == pytest.approx(0.55 - 0.35)
    _, m2 = next_stage(Stage.LAZY, fobs(epoch=60, val_acc=None), m, TH)  # no validation this epoch
    assert m2.val_history == m.val_history and m2.delta_val_acc == m.delta_val_acc
