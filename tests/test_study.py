"""Sweep bookkeeping on Optuna: several workers, killed workers, unwritable and full stores, other cwd."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from li2_lightning.study import StoreError, open_store
from li2_lightning.sweep import Sweep, expand, load_sweep, main, point_id, run_sweep

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _write(folder, spec, name="s.yaml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _cmd(path, *extra):
    return [sys.executable, "-m", "li2_lightning.sweep", str(path), "--no-progress", "--threads", "1",
            "--heartbeat-interval", "1", "--grace-period", "3", *extra]


def _trials(db):
    """(state, point_id, worker) of every trial, read with sqlite3, not through the code under test."""
    if not db.is_file():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        try:
            rows = con.execute("SELECT t.trial_id, t.state, a.key, a.value_json FROM trials t "
                               "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                               "AND a.key IN ('point_id', 'worker')").fetchall()
        except sqlite3.OperationalError:
            return []
    return trials_from_rows(rows)


def trials_from_rows(rows):
    """One dict per trial from (trial_id, state, attribute key, JSON value) rows of Optuna's tables."""
    out = {}
    for tid, state, key, value in rows:
        out.setdefault(tid, {"state": state})
        if key:
            out[tid][key] = json.loads(value)
    return list(out.values())


def _rows(path):
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _same_rows(a, b, tol=1e-6):
    assert a.keys() == b.keys()
    for pid in a:
        for key, va in a[pid].items():
            if key in ("population_size", "population_time_s", "curves"):
                continue
            vb = b[pid][key]
            if isinstance(va, float) and isinstance(vb, float):
                assert abs(va - vb) <= tol, (pid, key, va, vb)
            else:
                assert va == vb, (pid, key, va, vb)


TINY = {"population_size": 4, "accelerator": "cpu",
        "fixed": {"K": 8, "max_epochs": 200, "lr": 1e-2, "eval_every": 1},
        "grid": {"group": ["Z5", "Z7"], "seed": list(range(30))}}


def kill_one_of_three_workers(path, trials, storage_args=(), wait=90):
    """Start three `li2 sweep` workers on one sweep, SIGKILL one while it holds running trials (after
    some points are complete), let the others finish, and check every point is complete exactly once
    and the victim's points were failed and redone. ``trials()`` reads the store independently of the
    code under test. Returns the final trials."""
    procs = [subprocess.Popen(_cmd(path, *storage_args), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(3)]
    try:
        victim, held = procs[0], []
        deadline = time.time() + wait
        while time.time() < deadline:  # wait until the victim holds running trials, after some are complete
            current = trials()
            held = [t for t in current if t["state"] == "RUNNING" and t.get("worker", "").endswith(f":{victim.pid}")]
            if held and sum(t["state"] == "COMPLETE" for t in current) >= 4:
                break
            time.sleep(0.05)
        assert held, "the victim never held a running trial"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        for p in procs[1:]:
            assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    final = trials()
    complete = [t["point_id"] for t in final if t["state"] == "COMPLETE"]
    assert sorted(complete) == sorted(point_id(p) for p in expand(load_sweep(path)))  # every point exactly once
    assert {t["point_id"] for t in final if t["state"] == "FAIL"} >= {t["point_id"] for t in held}
    assert len({t.get("worker") for t in final if t["state"] == "COMPLETE"}) >= 2
    return final


@pytest.mark.slow  # three processes training 60 points next to each other: 60-120 s on 2 shared cores
def test_three_workers_one_killed_every_point_once_equal_to_one_worker(tmp_path):
    """60 points, 3 worker processes; one is killed with kill -9 while it trains a population. The
    others finish its points once its heartbeats stop; rows equal a one-worker run's."""
    path = _write(tmp_path / "multi", TINY)
    db = tmp_path / "multi" / "s.db"
    kill_one_of_three_workers(path, lambda: _trials(db))

    multi = tmp_path / "multi" / "s.jsonl"
    Sweep(path).export(multi)
    one = _write(tmp_path / "one", TINY)
    run_sweep(one, progress=False)
    _same_rows(_rows(multi), _rows(tmp_path / "one" / "s.jsonl"))


def test_two_sweep_processes_run_every_point_once(tmp_path):
    """The old bug: two `li2 sweep` processes on one results file both ran every point."""
    path = _write(tmp_path, {"population_size": 2, "accelerator": "cpu",
                             "fixed": {"group": "Z5", "K": 8, "max_epochs": 30, "lr": 1e-2},
                             "grid": {"seed": list(range(12))}})
    procs = [subprocess.Popen(_cmd(path, *extra), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for extra in ((), ("--workers", "2"))]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    complete = [t["point_id"] for t in _trials(tmp_path / "s.db") if t["state"] == "COMPLETE"]
    assert sorted(complete) == sorted(point_id(p) for p in expand(load_sweep(path)))
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 12


def test_run_from_another_folder_finds_the_finished_sweep(tmp_path, monkeypatch):
    path = _write(tmp_path / "sweeps", {"results": "../results/r.jsonl", "population_size": 3, "accelerator": "cpu",
                                        "fixed": {"group": "Z5", "K": 8, "max_epochs": 5},
                                        "grid": {"seed": [0, 1, 2]}})
    monkeypatch.chdir(tmp_path / "sweeps")
    assert run_sweep("s.yaml", progress=False) == 3
    assert (tmp_path / "results" / "r.db").is_file() and (tmp_path / "results" / "r.jsonl").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_sweep(path, progress=False) == 0
    assert list(elsewhere.iterdir()) == []


def test_old_results_jsonl_is_taken_over(tmp_path):
    """Rows a JSONL-era sweep finished are COMPLETE trials of the new store, not trained again."""
    spec = {"population_size": 3, "accelerator": "cpu", "fixed": {"group": "Z5", "K": 8, "max_epochs": 5},
            "grid": {"seed": [0, 1, 2]}}
    path = _write(tmp_path, spec)
    points = expand(load_sweep(path))
    (tmp_path / "s.jsonl").write_text(json.dumps({"id": point_id(points[1]), "final_test_acc": 0.5,
                                                  "group": "Z5"}) + "\n")
    assert run_sweep(path, progress=False) == 2
    assert len(_rows(tmp_path / "s.jsonl")) == 3


def test_store_in_place_of_a_folder_fails_before_training(tmp_path, capsys):
    path = _write(tmp_path, {"fixed": {"group": "Z5", "K": 8}, "grid": {"seed": [0]}})
    (tmp_path / "s.db").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "s.db" in err and "folder" in err and "Trainer" not in err


def test_results_folder_in_place_of_the_file_fails_before_training(tmp_path, capsys):
    path = _write(tmp_path, {"fixed": {"group": "Z5", "K": 8}, "grid": {"seed": [0]}})
    (tmp_path / "s.jsonl").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "s.jsonl" in err and "is not a file" in err and "Trainer" not in err
    import sqlite3  # nothing was trained: the store holds no finished trial

    with sqlite3.connect(tmp_path / "s.db") as con:
        assert con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] == 0


def _mount_tmpfs(folder, options):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    return folder


def test_read_only_store_folder_fails_before_training(tmp_path):
    ro = _mount_tmpfs(tmp_path / "ro", "ro,size=1m")  # read-only even for root
    try:
        with pytest.raises(StoreError, match="ro/r.db"):
            open_store(f"sqlite:///{ro}/r.db")
        path = _write(tmp_path, {"results": str(ro / "r.jsonl"), "fixed": {"group": "Z5", "K": 8},
                                 "grid": {"seed": [0]}})
        with pytest.raises(SystemExit) as exit_info:
            main([str(path), "--no-progress"])
        assert exit_info.value.code == 2
    finally:
        subprocess.run(["umount", "-l", str(ro)])


def test_full_disk_at_tell_time_keeps_results_in_fallback_file(tmp_path):
    """The store's disk fills while a population trains: the rows go to $TMPDIR, exit status 3."""
    disk = _mount_tmpfs(tmp_path / "disk", "size=2m")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    try:
        path = _write(tmp_path, {"results": str(disk / "r.jsonl"), "population_size": 3, "accelerator": "cpu",
                                 "fixed": {"group": "Z7", "K": 16, "max_epochs": 3000, "lr": 1e-2},
                                 "grid": {"seed": [0, 1, 2]}})
        proc = subprocess.Popen(_cmd(path), env={**ENV, "TMPDIR": str(tmpdir)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and sum(t["state"] == "RUNNING" and "worker" in t
                                             for t in _trials(disk / "r.db")) < 3:
            time.sleep(0.05)
        with open(disk / "filler", "wb") as f:  # fill the disk
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        err = proc.communicate(timeout=120)[1]
        assert proc.returncode == 3, err[-2000:]
        saved = list(tmpdir.glob("s.unrecorded-*.jsonl"))
        assert len(saved) == 1 and str(saved[0]) in err
        rows = _rows(saved[0])
        assert sorted(rows) == sorted(point_id(p) for p in expand(load_sweep(path)))
        assert all(r["epochs"] == 3000 and len(r["curves"]["val/acc"]) == 3000 for r in rows.values())
    finally:
        subprocess.run(["umount", "-l", str(disk)])
