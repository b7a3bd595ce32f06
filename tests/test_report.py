"""Report: boundary and fits against hand-computed values; figures render from a results file."""

import json
import math

import pytest

from li2_lightning.report import boundary, fit_c, fit_power, load_results, main, report, scaling_summary


def test_boundary_interpolates_first_upward_crossing():
    assert boundary([(0.1, 0.0), (0.3, 1.0)]) == pytest.approx(0.2)
    assert boundary([(0.3, 0.75), (0.1, 0.25)]) == pytest.approx(0.2)  # order of input does not matter
    assert boundary([(0.1, 0.6), (0.2, 1.0)]) == 0.1
    assert boundary([(0.1, 0.0), (0.2, 0.4)]) is None


def test_fits_recover_exact_laws():
    Ms = [23, 31, 41, 53, 71]
    c, r2 = fit_c(Ms, [3.0 * math.log(M) / M for M in Ms])
    assert c == pytest.approx(3.0) and r2 == pytest.approx(1.0)
    a, b, r2p = fit_power(Ms, [2.0 * M**-0.8 for M in Ms])
    assert (a, b, r2p) == pytest.approx((2.0, 0.8, 1.0))


def _rows(c_true=2.5):
    """Synthetic sweep: a seed generalizes iff p > c_true ln M / M (+ a per-seed jitter)."""
    rows = []
    for M in (23, 31, 41):
        pstar = c_true * math.log(M) / M
        for mult in (0.5, 0.8, 1.2, 2.0):
            for seed in range(4):
                p = mult * pstar
                ok = mult * (1 + 0.05 * (seed - 1.5)) > 1
                rows.append({"id": f"{M}-{mult}-{seed}", "group": f"Z{M}", "M": M, "train_fraction": p,
                             "final_test_acc": 1.0 if ok else 0.01, "epochs": 100, "seed": seed,
                             "epochs_to_test_acc_0.5": 50 if ok else None, "epochs_to_test_acc_0.99": 80 if ok else None,
                             "point": {"group": f"Z{M}", "p_star_multiplier": mult, "seed": seed}})
    for wd, t in ((0.0, None), (1e-4, 300), (2e-4, 100)):
        rows.append({"id": f"wd{wd}", "group": "Z71", "M": 71, "train_fraction": 0.4, "final_test_acc": 0.02 if t is None else 1.0,
                     "epochs": 400, "weight_decay": wd, "epochs_to_test_acc_0.5": t, "epochs_to_test_acc_0.99": t,
                     "point": {"group": "Z71", "weight_decay": wd}})
    return rows


def test_scaling_summary_finds_boundary_between_swept_fractions():
    s = scaling_summary([r for r in _rows() if r["group"] != "Z71"])
    for g, v in s["groups"].items():
        assert 0.8 < v["boundary_over_pstar"] / 2.5 * 2.7482 < 1.2
    assert 2.0 < s["fit"]["c"] < 3.0


def test_report_writes_figures_and_summary(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()) + '{"torn')
    assert len(load_results([path])) == 3 * 4 * 4 + 3
    summary = report([str(path)], tmp_path / "out")
    names = {p.split("/")[-1] for p in summary["figures"]}
    assert names == {"fig5_boundary.png", "grok_vs_wd.png"}
    for n in names:
        assert (tmp_path / "out" / n).read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "| Z71 | 0.0 | 1 | never |" in text and "ln M / M" in text
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.jsonl")])


def test_report_logs_figures_to_offline_wandb(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows() if r["group"] == "Z71"))
    report([str(path)], tmp_path / "out", use_wandb=True)
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_json_that_is_not_a_row_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_rows()[0]) + "\n" + "[1, 2]\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not a result row"):
        load_results([path])


def test_diverged_rows_are_kept_out_and_boundaries_split_by_weight_decay(tmp_path):
    """Two weight decays with boundaries c=2.5 and c=1.5 in the synthetic law give two fits, not one
    pooled; diverged rows (accuracy 1 but diverged) would move the boundary if counted."""
    rows = []
    for wd, c_true in ((1e-3, 2.5), (1e-4, 1.5)):
        for r in _rows(c_true):
            if r["group"] == "Z71":
                continue
            r = {**r, "id": f"{r['id']}-{wd}", "point": {**r["point"], "weight_decay": wd}, "weight_decay": wd}
            rows.append(r)
    rows += [{**r, "id": r["id"] + "-div", "final_test_acc": 1.0, "diverged": True, "outcome": "diverged",
              "point": {**r["point"], "seed": 99}} for r in rows if r["point"]["p_star_multiplier"] == 0.5]
    s = scaling_summary(rows)
    assert s["settings"] == ["weight_decay"]
    assert set(s["fits"]) == {"weight_decay=0.001", "weight_decay=0.0001"}
    assert 2.0 < s["fits"]["weight_decay=0.001"]["c"] < 3.0 and 1.2 < s["fits"]["weight_decay=0.0001"]["c"] < 1.8
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = report([str(path)], tmp_path / "out")
    assert summary["diverged"] == 3 * 4 * 2


def test_curves_figure_from_rows_with_curves(tmp_path):
    rows = [{"id": str(s), "group": "Z5", "M": 5, "final_test_acc": 1.0, "train_fraction": 0.4, "epochs": 3,
             "curves": {"train/acc": [0.1, 0.5, 1.0], "val/acc": [0.0, None, 1.0]}} for s in range(2)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = report([str(path)], tmp_path / "out")
    assert any(f.endswith("curves.png") for f in summary["figures"])
    assert (tmp_path / "out" / "curves.png").read_bytes()[:4] == b"\x89PNG"
