"""Sweeps: expansion, packing, results file, and a killed-and-restarted sweep."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from li2_lightning.sweep import (append_results, done_ids, expand, export_wandb, load_sweep, pack, point_id,
                                 run_sweep)


def _write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_grid_points_and_fixed(tmp_path):
    spec = load_sweep(_write(tmp_path, {
        "fixed": {"K": 8, "lr": 1e-3},
        "grid": {"group": ["Z5", "Z7"], "seed": [0, 1, 2]},
        "points": [{"weight_decay": 0.0}, {"weight_decay": 1e-3, "lr": 2e-3}]}))
    points = expand(spec)
    assert len(points) == 2 * 3 * 2
    assert {"group": "Z7", "seed": 2, "K": 8, "lr": 2e-3, "weight_decay": 1e-3} in points
    assert len({point_id(p) for p in points}) == len(points)
    assert spec["results"].endswith("s.jsonl")


def test_grids_union_and_validation(tmp_path):
    spec = load_sweep(_write(tmp_path, {"grids": [{"group": ["Z5"], "seed": [0, 1]},
                                                  {"group": ["D3"], "seed": [0]}]}))
    assert [p["group"] for p in expand(spec)] == ["Z5", "Z5", "D3"]
    with pytest.raises(ValueError, match="not known"):
        expand(load_sweep(_write(tmp_path, {"grid": {"group": ["Z5"], "sed": [0]}})))
    with pytest.raises(ValueError, match="non-empty list"):
        expand(load_sweep(_write(tmp_path, {"grid": {"group": "Z5"}})))
    with pytest.raises(ValueError, match="unknown keys"):
        load_sweep(_write(tmp_path, {"gird": {}}))
    with pytest.raises(ValueError, match="more than one"):
        expand(load_sweep(_write(tmp_path, {"fixed": {"group": "Z5", "n_train": 3, "train_fraction": 0.5}})))


def test_pack_keeps_shared_settings_together():
    points = [{"group": g, "K": 8, "seed": s, "weight_decay": wd, "p_star_multiplier": m}
              for g in ("Z5", "Z7") for s in range(3) for wd in (0.0, 1e-3) for m in (2.0, 1.0)]
    pops = pack(points, population_size=5)
    assert sum(len(p) for p in pops) == len(points)
    for pop in pops:
        assert len({p["group"] for p in pop}) == 1 and len(pop) <= 5
        ms = [p["p_star_multiplier"] for p in pop]
        assert ms == sorted(ms)
    assert len(pack(points + [{"group": "Z5", "K": 16, "seed": 0}], 100)) == 3


def test_results_file_skips_torn_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    append_results(path, [{"id": "a"}])
    with path.open("a") as f:
        f.write('{"id": "b", "tor')  # a writer killed mid-line
    append_results(path, [{"id": "c"}])
    assert done_ids(path) == {"a", "c"}
    assert path.read_text().splitlines()[-1] == '{"id": "c"}'


def test_run_sweep_in_process_and_resume(tmp_path):
    path = _write(tmp_path, {"results": str(tmp_path / "r.jsonl"), "population_size": 3, "accelerator": "cpu",
                             "fixed": {"group": "Z5", "K": 8, "max_epochs": 5, "lr": 1e-2},
                             "grid": {"seed": [0, 1, 2, 3], "train_fraction": [0.5, 0.8]}})
    assert run_sweep(path, progress=False, limit=1) == 3  # stopped after one population, as if killed
    assert len(done_ids(tmp_path / "r.jsonl")) == 3
    assert run_sweep(path, progress=False) == 5
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(point_id(p) for p in expand(load_sweep(path)))
    assert all(r["epochs"] == 5 and r["M"] == 5 for r in rows)
    assert run_sweep(path, progress=False) == 0


# two subprocesses each paying Lightning's import; ~15-20 s on a 2-core machine; in the default run
def test_killed_sweep_restarts_without_loss_or_duplicates(tmp_path):
    results = tmp_path / "r.jsonl"
    path = _write(tmp_path, {"results": str(results), "population_size": 2, "accelerator": "cpu",
                             "fixed": {"group": "Z7", "K": 16, "max_epochs": 150, "lr": 1e-2},
                             "grid": {"seed": list(range(12))}})
    cmd = [sys.executable, "-m", "li2_lightning.sweep", str(path), "--no-progress", "--threads", "1",
           "--heartbeat-interval", "1", "--grace-period", "2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and _complete(tmp_path / "r.db") < 2 and proc.poll() is None:
        time.sleep(0.05)
    killed_mid_sweep = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _complete(tmp_path / "r.db")
    assert killed_mid_sweep and 2 <= before < 12, f"kill did not land mid-sweep ({before} points done)"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines() if line.strip()]
    assert sorted(ids) == sorted(point_id(p) for p in expand(load_sweep(path)))  # each exactly once


def _complete(db) -> int:
    """COMPLETE trials in an SQLite store, read with sqlite3 (not through the code under test)."""
    import sqlite3

    if not db.is_file():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def test_export_wandb(tmp_path):
    path = _write(tmp_path, {"fixed": {"group": "Z5"}, "grid": {"seed": [0, 1, 2]}})
    cfg = export_wandb(path, tmp_path / "w.yaml")
    assert cfg["parameters"]["point_index"]["values"] == [0, 1, 2]
    assert yaml.safe_load((tmp_path / "w.yaml").read_text())["method"] == "grid"


def test_every_sweep_file_builds_its_populations():
    """Each sweep file in sweeps/ expands, packs and builds its first population (not trained)."""
    from pathlib import Path

    from li2_lightning.sweep import build_population

    files = sorted((Path(__file__).parents[1] / "sweeps").glob("*.yaml"))
    assert files
    for path in files:
        spec = load_sweep(path)
        populations = pack(expand(spec), spec["population_size"])
        kinds = {json.dumps({k: p.get(k) for k in ("optimizer", "preset")}) for pop in populations for p in pop}
        for kind in kinds:  # one population of each optimizer the file uses
            members = next(pop for pop in populations
                           if json.dumps({k: pop[0].get(k) for k in ("optimizer", "preset")}) == kind)[:2]
            module = build_population(members)
            assert module.S == len(members) and module.spec.name == members[0].get("optimizer", "adam")
            assert [m.seed for m in module.members] == [p.get("seed", 0) for p in members]


@pytest.mark.parametrize("preset", ["li2", "keller", "torch"])
def test_sweep_points_choose_optimizer_and_preset(preset):
    """A point's optimizer settings reach the population's OptimizerSpec; muon_lr stays per member."""
    from li2_lightning.sweep import build_population

    points = [{"group": "Z5", "K": 4, "optimizer": "muon", "preset": preset, "momentum": 0.9, "betas": [0.8, 0.99],
               "lr": 1e-3, "muon_lr": m_lr, "seed": seed} for seed, m_lr in ((0, 0.02), (1, 0.05))]
    (members,) = pack(points, 4)
    module = build_population(members)
    assert (module.spec.name, module.spec.preset, module.spec.momentum, module.spec.betas) == (
        "muon", preset, 0.9, (0.8, 0.99))
    assert [m.muon_lr for m in module.members] == [0.02, 0.05]
    assert module.spec.muon_preset().nesterov == (preset != "li2")


@pytest.mark.parametrize("text, message", [
    ("fixed: {group: Z5, max_epochs: abc}", "fixed.max_epochs='abc' is not accepted; accepted: an integer >= 1"),
    ("fixed: {group: Z5, max_epochs: 0}", "fixed.max_epochs=0 is not accepted; accepted: an integer >= 1"),
    ("fixed: [1, 2]", "fixed=[1, 2] is not accepted; accepted: a mapping"),
    ("- group: Z5\n- group: Z7\n", "holds a list; accepted: a mapping"),
    ("fixed: {group: Z5\n", "is not valid YAML at line"),
    ("grid: {group: [Z5], lr: [0.1, -1]}", "grid.lr[1]=-1 is not accepted; accepted: a number >= 0"),
    ("grid: {group: [Z5], optimizer: [adam, lion]}", "accepted: one of ['adam', 'adamw', 'sgd', 'muon']"),
    ("fixed: {group: Z5, nesterov: 1}", "fixed.nesterov=1 is not accepted; accepted: true or false"),
])
def test_wrong_sweep_files_give_one_line_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_sweep(path)
    assert message in str(info.value) and "bad.yaml" in str(info.value) and "\n" not in str(info.value)


def test_binary_sweep_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ValueError, match="bin.yaml' is not a text file"):
        load_sweep(path)


def test_diverged_member_is_flagged():
    """A huge SGD step makes member 0's loss overflow; member 1 trains normally."""
    from li2_lightning.sweep import run_population

    rows = run_population([{"group": "Z5", "K": 8, "max_epochs": 10, "lr": lr, "seed": s, "optimizer": "sgd"}
                           for s, lr in ((0, 1e4), (1, 1e-2))], {"name": "t", "accelerator": "cpu"})
    assert [r["diverged"] for r in rows] == [True, False]
    assert [r["outcome"] for r in rows] == ["diverged", "finished"]
    assert len(rows[1]["curves"]["train/loss"]) == 10 and all(v is not None for v in rows[1]["curves"]["train/loss"])


def test_population_size_from_memory():
    from li2_lightning.memory import POPULATION_FIXED, SAFETY, estimate_bytes, member_bytes, population_bytes
    from li2_lightning.sweep import population_size_for

    members = [{"group": "Z7", "K": 8, "seed": s} for s in range(40)]
    n = 19  # 40% of 49 pairs
    est = estimate_bytes(7, 8, n, 49 - n)
    per = member_bytes(est)
    fixed = POPULATION_FIXED + SAFETY * est.data
    assert population_size_for(members, available=int(fixed + 5.5 * per)) == 5
    assert population_bytes(7, 8, n, 49 - n, 5) <= int(fixed + 5.5 * per) < population_bytes(7, 8, n, 49 - n, 6)
    assert population_size_for(members, available=10**12) == 32
    with pytest.raises(ValueError, match="free"):
        population_size_for(members, available=int(fixed + 0.5 * per))
