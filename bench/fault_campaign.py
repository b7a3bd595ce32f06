"""Fault campaign: bad inputs, corrupt files, kills, full disks and concurrent runs, as a user meets them.

Every case runs the real command line (``train.py``, ``li2 sweep``, ``li2 report``) as a subprocess in a
fresh folder, with W&B disabled, and is judged by what a user would see and keep:

- ``clean error``: a non-zero exit within the time limit whose last line names the offending argument,
  file or key (the case's expected text), and no file that existed before was changed or lost;
- ``ok``: exit 0 and the case's own check of what was written (a resumable checkpoint, each sweep
  point once, ...);
- ``data loss``: a file that existed before was changed, truncated or removed, or a result was dropped;
- ``hang``: the time limit passed;
- ``silent garbage``: exit 0 where an error was due, or output that fails the case's check.

    python bench/fault_campaign.py                 # every case; table to stdout
    python bench/fault_campaign.py --only ckpt     # cases whose name contains "ckpt"
    python bench/fault_campaign.py --out report.md # also write the Markdown table

The kill loop (``--kills N``) SIGKILLs a training run at random moments with its run folder on a tmpfs
mount (another filesystem than $TMPDIR) and checks that every ``last.ckpt`` verifies and resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TRAIN = [PY, str(ROOT / "train.py")]
LI2 = [str(Path(PY).parent / "li2")]
DEFAULT = str(ROOT / "configs" / "default.yaml")
TINY = ["--trainer.max_epochs", "3", "--model.K", "16", "--data.group", "Z7", "--trainer.accelerator", "cpu"]


@dataclasses.dataclass
class Case:
    """One fault: how to set it up, what to run, and what a user must see."""

    name: str
    kind: str  # the fault class: input, group-file, config, checkpoint, sweep, report, kill, disk, memory
    cmd: Callable[[Path], list[str]]
    expect: str  # "error" or "ok"
    match: tuple[str, ...] = ()  # text the last line (error) must contain, case-insensitive
    setup: Optional[Callable[[Path], None]] = None
    check: Optional[Callable[[Path, subprocess.CompletedProcess], Optional[str]]] = None  # problem or None
    timeout: float = 120.0
    env: Optional[dict] = None
    may_change: tuple[str, ...] = ()  # files the command is meant to rewrite (e.g. a results file)


def _env(extra: Optional[dict] = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="disabled", PYTHONWARNINGS="ignore", **(extra or {}))
    return env


def _digest(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            try:
                out[str(p.relative_to(folder))] = hashlib.sha1(p.read_bytes()).hexdigest()
            except OSError:
                out[str(p.relative_to(folder))] = "unreadable"
    return out


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_case(case: Case, base: Path) -> dict:
    """Run one case in its own folder below ``base``; return its table row."""
    work = base / case.name
    work.mkdir(parents=True)
    if case.setup:
        case.setup(work)
    before = _digest(work)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(case.cmd(work), cwd=work, env=_env(case.env), capture_output=True, text=True,
                              timeout=case.timeout, stdin=subprocess.DEVNULL)
        status, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        proc, status = None, None
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
    elapsed = time.monotonic() - t0
    after = _digest(work)
    for mount in work.glob("disk"):
        if mount.is_mount():
            subprocess.run(["umount", "-l", str(mount)])
    lost = sorted(k for k, v in before.items() if after.get(k) != v and k not in case.may_change)
    new = sorted(set(after) - set(before))
    line = last_line(out)
    tail = " ".join(ln.strip() for ln in out.strip().splitlines()[-10:])  # jsonargparse names the key atop its block
    if status is None:
        outcome = "hang"
    elif lost:
        outcome = "data loss"
    elif case.expect == "error":
        problem = case.check(work, proc) if (case.check and status == 0) else "exit 0"
        if status == 0 and problem is None:
            outcome = "ok (harmless)"
        elif status == 0:
            outcome = "silent garbage"
            line = f"{line}  [check: {problem}]"
        elif all(m.lower() in tail.lower() for m in case.match) and "Traceback" not in line:
            outcome = "clean error"
        else:
            outcome = "unclear error"
    else:
        problem = case.check(work, proc) if (case.check and status == 0) else None
        outcome = "ok" if status == 0 and problem is None else ("silent garbage" if status == 0 else "failed")
        if problem:
            line = f"{line}  [check: {problem}]"
    return {"case": case.name, "kind": case.kind, "status": status, "seconds": round(elapsed, 1),
            "outcome": outcome, "last_line": line[:300], "new_files": len(new), "changed_or_lost": lost}


# ---------------------------------------------------------------------------------------------- cases


def fit(*args: str) -> Callable[[Path], list[str]]:
    return lambda w: [*TRAIN, "fit", "--config", DEFAULT, *args]


def write(name: str, content, mode: str = "w") -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = content(w) if callable(content) else content
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        with open(w / name, mode) as f:
            f.write(data)
    return setup


def input_cases() -> list[Case]:
    bad = [
        ("group-unknown", ["--data.group", "G13"], ("group",)),
        ("group-Z1", ["--data.group", "Z1"], ("M",)),
        ("group-Z0", ["--data.group", "Z0"], ("M",)),
        ("group-empty", ["--data.group", ""], ("group",)),
        ("group-D0", ["--data.group", "D0"], ("D",)),
        ("group-S9", ["--data.group", "S9"], ("order",)),
        ("group-missing-file", ["--data.group", "nothere.csv"], ("nothere.csv",)),
        ("frac-0", ["--data.train_fraction", "0"], ("train_fraction",)),
        ("frac-neg", ["--data.train_fraction", "-0.5"], ("train_fraction",)),
        ("frac-1.5", ["--data.train_fraction", "1.5"], ("train_fraction",)),
        ("frac-nan", ["--data.train_fraction", "nan"], ("train_fraction",)),
        ("frac-text", ["--data.train_fraction", "abc"], ("train_fraction",)),
        ("n_train-huge", ["--data.train_fraction", "null", "--data.n_train", "99999"], ("n_train",)),
        ("n_train-0", ["--data.train_fraction", "null", "--data.n_train", "0"], ("n_train",)),
        ("K-0", ["--model.K", "0"], ("K",)),
        ("K-neg", ["--model.K", "-4"], ("K",)),
        ("K-text", ["--model.K", "wide"], ("K",)),
        ("activation-bad", ["--model.activation", "tanh"], ("activation",)),
        ("loss-bad", ["--model.loss", "hinge"], ("loss",)),
        ("threads-0", ["--torch_threads", "0"], ("torch_threads",)),
        ("batch-0", ["--data.batch_size", "0"], ("batch_size",)),
        ("split-seed-text", ["--data.split_seed", "x"], ("split_seed",)),
        ("max-epochs-text", ["--trainer.max_epochs", "abc"], ("max_epochs",)),
        ("lr-neg", ["--model.optimizer.init_args.lr", "-1"], ("learning rate",)),
        ("muon-pattern", ["--model.optimizer", "li2_lightning.optim.Muon", "--model.optimizer.init_args.muon_params",
                          "Q"], ("muon_params",)),
        ("muon-preset", ["--model.optimizer", "li2_lightning.optim.Muon", "--model.optimizer.init_args.preset",
                         "adam"], ("preset",)),
        ("unknown-flag", ["--model.width", "3"], ("width",)),
        ("lr-scheduler-alone", ["--lr_scheduler", "torch.optim.lr_scheduler.StepLR"], ("scheduler",)),
        ("huge-K", ["--model.K", "100000000"], ("K",)),
        ("huge-group", ["--data.group", "Z5000"], ("GB", "group")),
    ]
    cases = [Case(f"input-{n}", "input", fit(*a), "error", m, timeout=60) for n, a, m in bad]
    cases.append(Case("input-nan-loss-sgd", "input",
                      fit("--trainer.max_epochs", "30", "--model.optimizer", "torch.optim.SGD",
                          "--model.optimizer.init_args.lr", "1000", "--data.train_fraction", "1"),
                      "error", ("loss is", "epoch"), timeout=120))
    return cases


def group_file_cases() -> list[Case]:
    def table_csv(rows):
        return "\n".join(",".join(map(str, r)) for r in rows) + "\n"

    z3 = [[(i + j) % 3 for j in range(3)] for i in range(3)]
    not_assoc = [[0, 1, 2, 3, 4], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3], [3, 2, 4, 0, 1], [4, 3, 1, 2, 0]]
    specs = [
        ("csv-empty", "g.csv", "", ("g.csv",)),
        ("csv-binary", "g.csv", "\x00\x01\x02garbage\xff", ("g.csv",)),
        ("csv-ragged", "g.csv", "0,1,2\n1,2\n2,0,1\n", ("g.csv",)),
        ("csv-text", "g.csv", "a,b\nc,d\n", ("g.csv",)),
        ("csv-out-of-range", "g.csv", table_csv([[0, 1, 5], [1, 2, 0], [2, 0, 1]]), ("g.csv",)),
        ("csv-not-latin", "g.csv", table_csv([[0, 1, 2], [1, 1, 0], [2, 0, 1]]), ("g.csv",)),
        ("csv-no-identity", "g.csv", table_csv([[1, 0, 2], [0, 2, 1], [2, 1, 0]]), ("g.csv",)),
        ("csv-not-assoc", "g.csv", table_csv(not_assoc), ("associat",)),
        ("csv-negative", "g.csv", table_csv([[0, -1], [1, 0]]), ("g.csv",)),
        ("csv-1x1", "g.csv", "0\n", ("g.csv",)),
        ("json-not-list", "g.json", json.dumps({"name": "x", "table": 3}), ("g.json",)),
        ("json-malformed", "g.json", "[[0,1],[1,0]", ("g.json",)),
        ("json-floats", "g.json", json.dumps([[0.5, 1], [1, 0]]), ("g.json",)),
        ("json-strings", "g.json", json.dumps([["a", "b"], ["b", "a"]]), ("g.json",)),
        ("wrong-suffix", "g.txt", table_csv(z3), ("g.txt",)),
    ]
    cases = [Case(f"groupfile-{n}", "group-file", (lambda f: fit("--data.group", f))(fname), "error", m,
                  setup=write(fname, text), timeout=60) for n, fname, text, m in specs]

    def big(n):
        def setup(w: Path) -> None:
            with open(w / "big.csv", "w") as f:
                row = ",".join(str(j) for j in range(n))
                f.write(row + "\n")
                f.write(row + "\n")  # only two rows: the size limit must fire on the first row
        return setup

    cases.append(Case("groupfile-6000-order", "group-file", fit("--data.group", "big.csv"), "error", ("order",),
                      setup=big(6000), timeout=30))
    cases.append(Case("groupfile-valid-z3", "group-file", fit("--data.group", "g.csv", "--trainer.max_epochs", "2"),
                      "ok", setup=write("g.csv", table_csv(z3)), timeout=120))
    return cases


def config_cases() -> list[Case]:
    specs = [
        ("yaml-malformed", "c.yaml", "trainer: [max_epochs: 3\nmodel: {K: 4", ("c.yaml",)),
        ("yaml-binary", "c.yaml", "\x00\x89PNG\x1a\n\x00\x00", ("c.yaml",)),
        ("yaml-list", "c.yaml", "- 1\n- 2\n", ("c.yaml",)),
        ("yaml-unknown-key", "c.yaml", "model:\n  wdith: 3\n", ("wdith",)),
        ("yaml-K-string", "c.yaml", "model:\n  K: lots\n", ("K",)),
        ("yaml-missing", None, None, ("nothere.yaml",)),
    ]
    cases = []
    for n, fname, text, m in specs:
        path = fname or "nothere.yaml"
        cases.append(Case(f"config-{n}", "config",
                          (lambda p: lambda w: [*TRAIN, "fit", "--config", DEFAULT, "--config", str(w / p)])(path),
                          "error", m, setup=write(fname, text) if fname else None, timeout=60))
    return cases


# --- checkpoints: a real checkpoint made once, then damaged in many ways


_CKPT: dict[str, bytes] = {}


def base_checkpoint(scratch: Path) -> bytes:
    """A 3-epoch Z7, K 16 run's last.ckpt (made once per campaign)."""
    if "z7" not in _CKPT:
        d = scratch / "_base_ckpt"
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([*TRAIN, "fit", "--config", DEFAULT, *TINY], cwd=d, env=_env(), check=True,
                       capture_output=True, timeout=300)
        [ckpt] = sorted(d.rglob("last.ckpt"))
        _CKPT["z7"] = ckpt.read_bytes()
    return _CKPT["z7"]


def checkpoint_cases(scratch: Path) -> list[Case]:
    def with_ckpt(mutate: Callable[[bytes], bytes]) -> Callable[[Path], None]:
        def setup(w: Path) -> None:
            (w / "in.ckpt").write_bytes(mutate(base_checkpoint(scratch)))
        return setup

    def flip(offset_frac: float) -> Callable[[bytes], bytes]:
        def mutate(b: bytes) -> bytes:
            i = int(len(b) * offset_frac)
            return b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]
        return mutate

    resume = lambda *extra: (lambda w: [*TRAIN, "fit", "--config", DEFAULT, *TINY, "--trainer.max_epochs", "5",  # noqa: E731
                                         *extra, "--ckpt_path", str(w / "in.ckpt")])
    cases = [
        Case("ckpt-empty", "checkpoint", resume(), "error", ("in.ckpt",), setup=write("in.ckpt", "")),
        Case("ckpt-text", "checkpoint", resume(), "error", ("in.ckpt",), setup=write("in.ckpt", "hello")),
        Case("ckpt-missing", "checkpoint", lambda w: [*TRAIN, "fit", "--config", DEFAULT, *TINY, "--ckpt_path",
                                                      str(w / "gone.ckpt")], "error", ("gone.ckpt",)),
        Case("ckpt-truncated-half", "checkpoint", resume(), "error", ("in.ckpt",),
             setup=with_ckpt(lambda b: b[: len(b) // 2])),
        Case("ckpt-truncated-end", "checkpoint", resume(), "error", ("in.ckpt",),
             setup=with_ckpt(lambda b: b[:-100])),
        Case("ckpt-foreign-torch", "checkpoint", resume(), "error", ("in.ckpt",),
             setup=lambda w: __import__("torch").save({"x": 1}, w / "in.ckpt")),
        Case("ckpt-K-differs", "checkpoint", resume("--model.K", "32"), "error", ("K",),
             setup=with_ckpt(lambda b: b)),
        Case("ckpt-activation-differs", "checkpoint", resume("--model.activation", "relu"), "error",
             ("activation",), setup=with_ckpt(lambda b: b)),
        Case("ckpt-group-differs", "checkpoint", resume("--data.group", "Z11"), "error", ("group",),
             setup=with_ckpt(lambda b: b)),
        Case("ckpt-optimizer-differs", "checkpoint", resume("--model.optimizer", "torch.optim.SGD",
                                                            "--model.optimizer.init_args.lr", "0.1"),
             "error", ("optimizer",), setup=with_ckpt(lambda b: b)),
        Case("ckpt-muon-differs", "checkpoint", resume("--model.optimizer", "li2_lightning.optim.Muon"),
             "error", ("optimizer",), setup=with_ckpt(lambda b: b)),
        Case("ckpt-resume-ok", "checkpoint", resume(), "ok", setup=with_ckpt(lambda b: b)),
    ]
    def same_as_original(w: Path, _proc) -> Optional[str]:
        """A run that resumed from a flipped file is fine only if the flip changed nothing it loads
        (zip padding): the file must load to the original's tensors."""
        import io

        import torch

        a = torch.load(io.BytesIO(base_checkpoint(scratch)), map_location="cpu", weights_only=False)["state_dict"]
        b = torch.load(w / "in.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        return None if same else "resumed from a checkpoint whose weights differ from the written ones"

    for frac in (0.05, 0.2, 0.4, 0.6, 0.75, 0.9, 0.97):
        cases.append(Case(f"ckpt-flip-{int(frac * 100):02d}pct", "checkpoint", resume(), "error", ("in.ckpt",),
                          setup=with_ckpt(flip(frac)), check=same_as_original))
    return cases


def sweep_cases() -> list[Case]:
    tiny = {"fixed": {"group": "Z5", "K": 8, "max_epochs": 3}, "grid": {"seed": [0, 1, 2]}}

    def sweep_file(spec) -> Callable[[Path], None]:
        def setup(w: Path) -> None:
            import yaml
            (w / "s.yaml").write_text(yaml.safe_dump(spec) if not isinstance(spec, str) else spec)
        return setup

    sweep = lambda *extra: (lambda w: [*LI2, "sweep", str(w / "s.yaml"), "--no-progress", *extra])  # noqa: E731

    def rows_once(n):
        def check(w: Path, _proc) -> Optional[str]:
            rows = [json.loads(x) for x in (w / "s.jsonl").read_text().splitlines() if x.strip()]
            ids = [r["id"] for r in rows]
            return None if len(ids) == n and len(set(ids)) == n else f"{len(ids)} rows, {len(set(ids))} ids"
        return check

    cases = [
        Case("sweep-not-mapping", "sweep", sweep(), "error", ("s.yaml",), setup=sweep_file("- 1\n- 2\n")),
        Case("sweep-malformed", "sweep", sweep(), "error", ("s.yaml",), setup=sweep_file("fixed: {K: [")),
        Case("sweep-binary", "sweep", sweep(), "error", ("s.yaml",), setup=sweep_file("\x00\xff\x01")),
        Case("sweep-fixed-list", "sweep", sweep(), "error", ("fixed",), setup=sweep_file({"fixed": [1, 2]})),
        Case("sweep-max-epochs-text", "sweep", sweep(), "error", ("max_epochs",),
             setup=sweep_file({"fixed": {"group": "Z5", "K": 8, "max_epochs": "abc"}, "grid": {"seed": [0]}})),
        Case("sweep-max-epochs-0", "sweep", sweep(), "error", ("max_epochs",),
             setup=sweep_file({"fixed": {"group": "Z5", "K": 8, "max_epochs": 0}, "grid": {"seed": [0]}})),
        Case("sweep-unknown-key", "sweep", sweep(), "error", ("sed",),
             setup=sweep_file({"fixed": {"group": "Z5"}, "grid": {"sed": [0]}})),
        Case("sweep-bad-group", "sweep", sweep(), "error", ("group",),
             setup=sweep_file({"fixed": {"group": "Q9", "K": 8}, "grid": {"seed": [0]}})),
        Case("sweep-K-huge", "sweep", sweep(), "error", ("K",),
             setup=sweep_file({"fixed": {"group": "Z5", "K": 10**9, "max_epochs": 2}, "grid": {"seed": [0]}})),
        Case("sweep-Z3000", "sweep", sweep(), "error", ("GB", "free"),
             setup=sweep_file({"fixed": {"group": "Z3000", "K": 512, "max_epochs": 2}, "grid": {"seed": [0]}})),
        Case("sweep-results-dir-in-place", "sweep", sweep(), "error", ("s.jsonl",),
             setup=lambda w: (sweep_file(tiny)(w), (w / "s.jsonl").mkdir())),
        Case("sweep-ok", "sweep", sweep(), "ok", setup=sweep_file(tiny), check=rows_once(3), timeout=300),
        Case("sweep-torn-line-rerun", "sweep", sweep(), "ok",
             setup=lambda w: (sweep_file(tiny)(w), (w / "s.jsonl").write_text('{"id": "abc", "trunc')),
             check=lambda w, p: None if len([x for x in (w / "s.jsonl").read_text().splitlines()
                                              if x.strip().startswith('{"') and x.strip().endswith("}")]) >= 3
             else "fewer than 3 complete rows", timeout=300, may_change=("s.jsonl",)),
        Case("report-not-rows", "report", lambda w: [*LI2, "report", str(w / "r.jsonl"), "--out", str(w / "rep")],
             "error", ("r.jsonl",), setup=write("r.jsonl", '{"a": 1}\n[1, 2]\n')),
        Case("report-empty", "report", lambda w: [*LI2, "report", str(w / "r.jsonl"), "--out", str(w / "rep")],
             "error", ("r.jsonl",), setup=write("r.jsonl", "")),
        Case("report-missing", "report", lambda w: [*LI2, "report", str(w / "none.jsonl"), "--out", str(w / "rep")],
             "error", ("none.jsonl",)),
    ]
    return cases


def more_cases() -> list[Case]:
    """Concurrent runs, full disks, and the remaining input and subcommand edges."""
    import yaml

    tiny_sweep = {"fixed": {"group": "Z5", "K": 8, "max_epochs": 3}, "grid": {"seed": [0, 1, 2, 3, 4, 5]}}

    def two_at_once(cmd_a: list[str], cmd_b: list[str]) -> Callable[[Path], list[str]]:
        script = ("import subprocess, sys\n"
                  f"ps = [subprocess.Popen(c) for c in ({cmd_a!r}, {cmd_b!r})]\n"
                  "sys.exit(max(p.wait() for p in ps))\n")
        return lambda w: [PY, "-c", script]

    def two_run_folders(w: Path, _proc) -> Optional[str]:
        configs = sorted(w.rglob("config.yaml"))
        ckpts = sorted(w.rglob("last.ckpt"))
        return None if len(configs) == 2 and len(ckpts) == 2 else f"{len(configs)} configs, {len(ckpts)} last.ckpt"

    def sweep_rows_once(n: int) -> Callable[[Path, subprocess.CompletedProcess], Optional[str]]:
        def check(w: Path, _proc) -> Optional[str]:
            rows = [json.loads(x) for x in (w / "s.jsonl").read_text().splitlines() if x.strip()]
            ids = [r["id"] for r in rows]
            return None if len(ids) == n and len(set(ids)) == n else f"{len(ids)} rows, {len(set(ids))} ids"
        return check

    def mount_small(size: str) -> Callable[[Path], None]:
        def setup(w: Path) -> None:
            (w / "disk").mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(w / "disk")], check=True)
        return setup

    sweep_yaml = write("s.yaml", yaml.safe_dump(tiny_sweep))
    fit_cmd = [*TRAIN, "fit", "--config", DEFAULT, *TINY, "--trainer.max_epochs", "4"]
    table = {"name": "Z3-json", "table": [[(i + j) % 3 for j in range(3)] for i in range(3)]}
    return [
        Case("concurrent-two-fits-one-config", "concurrent", two_at_once(fit_cmd, fit_cmd), "ok",
             check=two_run_folders, timeout=300),
        Case("concurrent-two-sweeps-one-file", "concurrent",
             lambda w: [PY, "-c", "import subprocess, sys\n"
                        f"c = {[*LI2, 'sweep']!r} + [{str('s.yaml')!r}, '--no-progress']\n"
                        "ps = [subprocess.Popen(c) for _ in range(2)]\nsys.exit(max(p.wait() for p in ps))\n"],
             "ok", setup=sweep_yaml, check=sweep_rows_once(6), timeout=300),
        Case("disk-full-checkpoint", "disk",
             lambda w: [*TRAIN, "fit", "--config", DEFAULT, "--trainer.max_epochs", "120", "--model.K", "512",
                        "--trainer.default_root_dir", str(w / "disk" / "run")],
             "error", ("space",), setup=mount_small("700k"), timeout=300),
        Case("sweep-results-under-a-file", "sweep", lambda w: [*LI2, "sweep", str(w / "s.yaml"), "--no-progress",
                                                              "--results", str(w / "afile" / "r.jsonl")],
             "error", ("afile",), setup=lambda w: (sweep_yaml(w), (w / "afile").write_text("x"))),
        Case("sweep-missing-file", "sweep", lambda w: [*LI2, "sweep", str(w / "none.yaml")], "error", ("none.yaml",)),
        Case("sweep-workers-0", "sweep", lambda w: [*LI2, "sweep", str(w / "s.yaml"), "--workers", "0"], "error",
             ("workers",), setup=sweep_yaml),
        Case("sweep-fit-command-range", "sweep", lambda w: [*LI2, "sweep", str(w / "s.yaml"), "--fit-command", "99"],
             "error", ("99",), setup=sweep_yaml),
        Case("sweep-dry-run", "sweep", lambda w: [*LI2, "sweep", str(w / "s.yaml"), "--dry-run"], "ok",
             setup=sweep_yaml),
        Case("report-ok", "report", lambda w: [*LI2, "report", str(ROOT / "results" / "fig3_wd_cpu.jsonl"), "--out",
                                               str(w / "rep")], "ok",
             check=lambda w, p: None if any((w / "rep").glob("*.png")) else "no figure written", timeout=300),
        Case("input-pstar-0", "input", fit("--data.train_fraction", "null", "--data.p_star_multiplier", "0"),
             "error", ("p_star_multiplier",)),
        Case("input-V-init-nan", "input", fit("--model.V_init_scale", "nan"), "error", ("V_init_scale",)),
        Case("input-predict-pairs-bad", "input",
             lambda w: [*TRAIN, "predict", "--config", DEFAULT, *TINY, "--data.predict_pairs", "[[99, 0]]"],
             "error", ("predict_pairs",)),
        Case("input-hidden-layers-0", "input", fit("--model.hidden_layers", "0"), "error", ("hidden_layers",)),
        Case("input-top-layer-bad", "input", fit("--model.top_layer", "frozen"), "error", ("top_layer",)),
        Case("groupfile-valid-json", "group-file", fit("--data.group", "g.json", "--trainer.max_epochs", "2"), "ok",
             setup=write("g.json", json.dumps(table)), timeout=120),
        Case("fit-batch-size-ok", "input", fit(*TINY, "--data.batch_size", "7"), "ok", timeout=120),
        Case("test-subcommand-ok", "input", lambda w: [*TRAIN, "test", "--config", DEFAULT, *TINY], "ok", timeout=120),
    ]


def sigterm_case() -> Case:
    """SIGTERM must end a run with a non-zero status, so a scheduler does not see it as finished."""

    def cmd(w: Path) -> list[str]:
        script = (f"import subprocess, signal, sys, time\n"
                  f"p = subprocess.Popen({[*TRAIN, 'fit', '--config', DEFAULT, '--trainer.max_epochs', '100000']!r})\n"
                  f"time.sleep(25)\np.send_signal(signal.SIGTERM)\nrc = p.wait(120)\n"
                  f"print('child exit', rc)\nsys.exit(0 if rc != 0 else 1)\n")
        return [PY, "-c", script]

    return Case("signal-sigterm-nonzero", "kill", cmd, "ok", timeout=200)


def all_cases(scratch: Path) -> list[Case]:
    return [*input_cases(), *group_file_cases(), *config_cases(), *checkpoint_cases(scratch), *sweep_cases(),
            *more_cases(), sigterm_case()]


# ---------------------------------------------------------------------------------------------- kill loop


EVERY_EPOCH = """trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_epochs: 1, save_top_k: 1, save_last: true}
"""


def kill_loop(kills: int, seed: int = 0) -> list[dict]:
    """SIGKILL a run at random moments with its folder on a tmpfs (another filesystem than $TMPDIR).

    The run is the Fig. 3 net (Z71, K 2048: ~5 MB checkpoints) writing a checkpoint and last.ckpt
    every epoch, so kills often land inside a write. After each kill every checkpoint must verify,
    no temp file may be left once the next run has started, and the next run resumes from the newest
    checkpoint (it must still be running when it is killed, so the resume worked).
    """
    from li2_lightning.checkpoint import verify_checkpoint

    rng = random.Random(seed)
    mnt = Path(tempfile.mkdtemp(prefix="li2-tmpfs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(mnt)]).returncode == 0
    rows = []
    try:
        root = mnt / "run"
        (mnt / "every_epoch.yaml").write_text(EVERY_EPOCH)
        args = [*TRAIN, "fit", "--config", str(ROOT / "configs" / "fig3.yaml"), "--config", str(mnt / "every_epoch.yaml"),
                "--trainer.max_epochs", "100000", "--trainer.default_root_dir", str(root), "--trainer.logger", "false"]
        tmp_before = {x for x in Path(tempfile.gettempdir()).iterdir()}
        for i in range(kills):
            ckpts = sorted(root.rglob("*.ckpt"), key=lambda c: c.stat().st_mtime)
            resume = ["--ckpt_path", str(ckpts[-1])] if ckpts else []
            p = subprocess.Popen([*args, *resume], cwd=mnt, env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(8.0, 20.0))
            alive = p.poll() is None
            p.send_signal(signal.SIGKILL)
            _, err = p.communicate()
            ckpts = sorted(root.rglob("*.ckpt"))
            problems = []
            for c in ckpts:
                try:
                    verify_checkpoint(c)
                except ValueError as e:
                    problems.append(str(e))
            orphans = [str(x) for x in mnt.rglob("*") if ".tmp" in x.name]
            new_tmp = [str(x) for x in Path(tempfile.gettempdir()).iterdir() if x not in tmp_before
                       and x.is_file() and x.stat().st_size > 1_000_000]
            rows.append({"kill": i, "resumed_from": resume[1] if resume else None, "alive_at_kill": alive,
                         "checkpoints": len(ckpts), "problems": problems, "temp_files_in_run": len(orphans),
                         "big_new_files_in_tmpdir": len(new_tmp), "tmpfs": mounted,
                         "stderr_tail": "" if alive else last_line(err)})
            print(json.dumps(rows[-1]), flush=True)
        # a last start cleans the orphans of the killed writers: none may remain once it has begun
        p = subprocess.Popen([*args, "--ckpt_path", str(sorted(root.rglob("*.ckpt"), key=lambda c: c.stat().st_mtime)[-1])],
                             cwd=mnt, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(15)
        p.send_signal(signal.SIGTERM)
        p.wait()
        left = [str(x) for x in mnt.rglob("*") if ".tmp" in x.name]
        rows.append({"final_restart_exit": p.returncode, "temp_files_left": left})
        print(json.dumps(rows[-1]), flush=True)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)])
        shutil.rmtree(mnt, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------- main


def markdown(rows: list[dict]) -> str:
    out = ["| case | kind | exit | s | outcome | last line |", "|---|---|---|---|---|---|"]
    for r in rows:
        line = r["last_line"].replace("|", "\\|")
        out.append(f"| {r['case']} | {r['kind']} | {r['status']} | {r['seconds']} | {r['outcome']} | {line} |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--out", help="write the Markdown table and JSON rows here (path stem)")
    parser.add_argument("--kills", type=int, default=0, help="also run the kill -9 loop with this many kills")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="li2-faults-"))
    rows = []
    try:
        cases = [c for c in all_cases(scratch) if not args.only or args.only in c.name]
        for case in cases:
            row = run_case(case, scratch)
            rows.append(row)
            print(f"{row['outcome']:>14}  {row['case']:<34} exit={row['status']} {row['seconds']:>6}s  "
                  f"{row['last_line'][:140]}", flush=True)
        kill_rows = kill_loop(args.kills) if args.kills else []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print("\noutcomes:", json.dumps(counts))
    if kill_rows:
        kills = [r for r in kill_rows if "kill" in r]
        bad = [r for r in kills if r["problems"] or not r["alive_at_kill"] or r["big_new_files_in_tmpdir"]]
        print(f"kill loop: {len(kills)} kills, {len(bad)} with a bad checkpoint, a failed resume or a temp-dir "
              f"orphan; temp files left after the last restart: {len(kill_rows[-1]['temp_files_left'])}")
    if args.out:
        Path(args.out + ".md").write_text(markdown(rows) + "\n")
        Path(args.out + ".json").write_text(json.dumps({"cases": rows, "kills": kill_rows}, indent=1))
    wanted = {"clean error", "ok", "ok (harmless)"}
    return 0 if all(r["outcome"] in wanted for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
