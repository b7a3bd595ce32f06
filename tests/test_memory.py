"""Memory estimates: the fast refusal of runs that cannot fit, its advice, and the calibration."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from li2_lightning.data import n_train_for
from li2_lightning.memory import SAFETY, check_fits, estimate_bytes


def closed_form(M, K, b, n_val, slots=2):
    """The documented count, written out: data 40 M², model 4·3MK·(2 + slots), steps per row."""
    data, model = 40 * M * M, 4 * 3 * M * K * (2 + slots)
    per_row = 4 * (4 * K + 5 * M)
    return SAFETY * (data + model + max(b * per_row, 0.9 * n_val * per_row))


def test_estimate_matches_the_documented_count():
    for M, K, n, n_val, b in [(97, 512, 3763, 5646, None), (300, 64, 36000, 54000, 1000), (11, 3, 5, 116, 2)]:
        got = estimate_bytes(M, K, n, n_val, b).total
        assert got == pytest.approx(closed_form(M, K, n if b is None else b, n_val), rel=1e-9, abs=2)


def test_z5000_default_config_is_refused_at_once_with_what_would_fit():
    M = 5000
    n = n_train_for(M, 0.4)
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        check_fits(M, 512, n, M * M - n)  # this machine's real free memory
    assert time.perf_counter() - t0 < 2
    msg = str(err.value)
    assert re.search(r"needs about [\d.]+ GB on cpu .* but [\d.]+ (GB|MB) is available", msg)
    assert "use a group of order <=" in msg  # 15M held-out pairs at once: no batch_size helps


@pytest.mark.parametrize("free_mb", [200, 400])
def test_the_suggested_batch_size_is_the_largest_that_fits(free_mb):
    M, K, n = 300, 256, 36000  # full batch: about 556 MB
    free = free_mb * 10**6
    with pytest.raises(ValueError, match=rf"needs about .* but {free_mb}.0 MB is available") as err:
        check_fits(M, K, n, 0, None, available=free)
    b = int(re.search(r"batch_size=(\d+)", str(err.value)).group(1))
    assert closed_form(M, K, b, 0) <= free < closed_form(M, K, b + 1, 0)
    check_fits(M, K, n, 0, b, available=free)  # the advice works


def test_the_suggested_K_is_the_largest_that_fits():
    M, K, n = 2000, 16384, 1  # the model, not the batch, is what does not fit
    free = 2 * 10**9
    with pytest.raises(ValueError, match=r"set K=\d+") as err:
        check_fits(M, K, n, 0, None, available=free)
    k = int(re.search(r"K=(\d+) \(the largest", str(err.value)).group(1))
    assert closed_form(M, k, n, 0) <= free < closed_form(M, k + 1, n, 0)


def test_a_run_that_fits_passes_and_cuda_counts_no_data():
    est = check_fits(97, 512, 3763, 5646, available=10**9)
    assert est.total < 10**9
    # on a GPU the data stays on the CPU: only the model and the steps are compared
    big_data = check_fits(3000, 1, 9, 0, None, available=10**7, device="cuda:0")
    assert big_data.data > 10**7


_PEAK = r"""
import json, os, resource, sys, warnings
import torch
torch.set_num_threads(1)
import lightning.pytorch as pl
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module
warnings.filterwarnings("ignore")
base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
dm = GroupArithmeticDataModule(sys.argv[1])
pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
           enable_progress_bar=False, enable_model_summary=False,
           num_sanity_val_steps=0).fit(Li2Module(K=int(sys.argv[2])), dm)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"n": dm.n_train, "n_val": len(dm.test_y), "grown": peak - base}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("group, M, K", [("Z300", 300, 512), ("Z500", 500, 256)])
def test_estimate_bounds_the_measured_peak(group, M, K):
    out = subprocess.run([sys.executable, "-c", _PEAK, group, str(K)], capture_output=True, text=True,
                         check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    est = estimate_bytes(M, K, r["n"], r["n_val"]).total
    assert r["grown"] <= est <= 3 * r["grown"], (est, r)


def test_population_plan_is_the_documented_count():
    from li2_lightning.memory import population_bytes

    for M, K, n, S in [(41, 256, 672, 4), (97, 512, 3763, 64), (7, 8, 19, 1)]:
        n_val = M * M - n
        per_row = 4 * (4 * K + 5 * M)
        member = 1.25 * (4 * 3 * M * K * 4 + max(n * per_row, 0.9 * n_val * per_row))
        expected = 36e6 + SAFETY * 40 * M * M + S * member
        assert population_bytes(M, K, n, n_val, S) == pytest.approx(expected, rel=1e-9, abs=S + 4)  # int parts


def _population_peak_script() -> str:
    """bench/bench_population_memory.py's child: trains S members in a fresh process, prints the peak."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_population_memory import CHILD

    return CHILD


@pytest.mark.slow
@pytest.mark.parametrize("S", [4, 64])
def test_population_plan_brackets_the_measured_peak(S):
    """The sweep's plan for S members lies between the measured peak and 1.5 times it (Z41, K 256)."""
    from li2_lightning.memory import population_bytes

    out = subprocess.run([sys.executable, "-c", _population_peak_script(), "Z41", "256", str(S)],
                         capture_output=True, text=True, check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    plan = population_bytes(41, 256, r["n"], 41 * 41 - r["n"], S)
    assert r["measured"] <= plan <= 1.5 * r["measured"], (plan, r)
