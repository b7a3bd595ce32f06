"""Atomic checkpoint writes on another filesystem, integrity checks and settings checks.

The filesystem tests mount a tmpfs (a filesystem other than $TMPDIR's, and one that can be filled)
and kill a forked writer with SIGKILL at random moments.
"""

import os
import random
import signal
import subprocess
import time
import zipfile

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from li2_lightning.checkpoint import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    atomic_save,
    check_compatible,
    clean_orphans,
    optimizer_signature,
    verify_checkpoint,
)
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module
from li2_lightning.optim import Muon


@pytest.fixture
def tmpfs(tmp_path, request):
    """A fresh tmpfs of the size given by ``@pytest.mark.parametrize('tmpfs', [...], indirect=True)``."""
    size = getattr(request, "param", "64m")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _ckpt(value: float, n: int, **hp):
    return {"state_dict": {"net.W": torch.full((n,), value)}, "hyper_parameters": {"i": value, **hp}}


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("tmpfs", ["4m"], indirect=True)
def test_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmpfs):
    target = tmpfs / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(1.0, 400_000), target)  # 1.6 MB
    before = target.read_bytes()
    with pytest.raises(CheckpointWriteError, match=f"could not write checkpoint '{target}'") as err:
        io.save_checkpoint(_ckpt(2.0, 700_000), target)  # 2.8 MB: does not fit beside the old one
    assert isinstance(err.value, OSError) and err.value.errno
    assert target.read_bytes() == before
    assert verify_checkpoint(target)["hyper_parameters"]["i"] == 1.0
    assert os.listdir(tmpfs) == ["last.ckpt"]
    io.save_checkpoint(_ckpt(3.0, 100_000), target)  # room again: the next save works
    assert verify_checkpoint(target)["hyper_parameters"]["i"] == 3.0


def _kill_writers(folder, kills, seed):
    """Fork writers saving ever-new checkpoints to ``folder/last.ckpt``; SIGKILL each at random."""
    rng = random.Random(seed)
    target = folder / "last.ckpt"
    orphans_seen, count = 0, 0
    for k in range(kills):
        pid = os.fork()
        if pid == 0:  # child: save forever (until killed)
            try:
                i = 0
                while True:
                    i += 1
                    atomic_save(_ckpt(float(1000 * k + i), 1_000_000), target)
            finally:
                os._exit(1)
        deadline = time.monotonic() + 20
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        checkpoint = verify_checkpoint(target)  # complete, CRCs good, finite
        W, i = checkpoint["state_dict"]["net.W"], checkpoint["hyper_parameters"]["i"]
        assert torch.equal(W, torch.full_like(W, i)), "a checkpoint mixes two saves"
        orphans_seen += bool(_temp_files(folder))
        count += 1
    return orphans_seen, count


@pytest.mark.parametrize("kills", [5, pytest.param(24, marks=pytest.mark.slow)])
def test_kill_9_during_saves_leaves_a_valid_target_and_the_next_start_cleans_orphans(tmpfs, kills):
    orphans_seen, count = _kill_writers(tmpfs, kills, seed=kills)
    assert count == kills
    # a kill landed mid-write at least once (a temp file was left), else the test proved nothing
    assert orphans_seen >= 1
    live = tmpfs / ".last.ckpt.tmp-999999999-00"  # a pid that cannot exist is cleaned too ...
    live.write_bytes(b"x")
    mine = tmpfs / f".last.ckpt.tmp-{os.getpid()}-00"  # ... but a live process's file is kept
    mine.write_bytes(b"x")
    AtomicCheckpointIO().save_checkpoint(_ckpt(7.0, 10), tmpfs / "epoch=1.ckpt")  # the next start
    assert _temp_files(tmpfs) == [mine.name]
    assert verify_checkpoint(tmpfs / "last.ckpt")


# --- integrity --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real Li2Module checkpoint (Z14, K=6, sqr, Adam) written through AtomicCheckpointIO."""
    root = tmp_path_factory.mktemp("run")
    pl.seed_everything(0, verbose=False)
    dm = GroupArithmeticDataModule("Z14", train_fraction=0.5)
    model = Li2Module(K=6)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         plugins=[AtomicCheckpointIO()], default_root_dir=root,
                         callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)])
    trainer.fit(model, dm)
    return root / "ckpt" / "last.ckpt"


def _member_spans(path):
    """(start, end) byte ranges of each member's data in the zip file."""
    spans = []
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
            start = info.header_offset + 30 + name_len + extra_len
            if info.compress_size:
                spans.append((start, start + info.compress_size))
    return spans


def test_flipped_bytes_are_detected(trained, tmp_path):
    data = trained.read_bytes()
    reference = verify_checkpoint(trained)
    rng = random.Random(0)
    inside = [rng.randrange(a, b) for a, b in rng.sample(_member_spans(trained), 6)]
    anywhere = [rng.randrange(len(data)) for _ in range(10)]
    detected = 0
    for offset in inside + anywhere:
        bad = bytearray(data)
        bad[offset] ^= 0x5A
        path = tmp_path / f"flip{offset}.ckpt"
        path.write_bytes(bytes(bad))
        try:
            loaded = verify_checkpoint(path)
        except ValueError as err:
            assert str(path) in str(err)
            detected += 1
        else:  # a flip in padding or an unused header field: harmless only if nothing changed
            assert offset not in inside
            for k, v in reference["state_dict"].items():
                assert torch.equal(loaded["state_dict"][k], v)
            assert loaded["hyper_parameters"] == reference["hyper_parameters"]
    assert detected >= len(inside)


def test_truncated_empty_foreign_and_non_finite_files_are_refused(trained, tmp_path):
    data = trained.read_bytes()
    cases = {
        "empty.ckpt": (b"", "empty file"),
        "half.ckpt": (data[: len(data) // 2], "truncated"),
        "text.ckpt": (b"not a checkpoint at all\n", "not a checkpoint"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=match) as err:
            verify_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["state_dict"]["net.V"][1, 2] = float("nan")
    atomic_save(checkpoint, tmp_path / "nan.ckpt")
    with pytest.raises(ValueError, match=r"non-finite weights: 1 of \d+ entries of 'net.V'"):
        verify_checkpoint(tmp_path / "nan.ckpt")
    del checkpoint["hyper_parameters"]
    checkpoint["state_dict"]["net.V"][1, 2] = 0.0
    atomic_save(checkpoint, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a li2_lightning checkpoint"):
        verify_checkpoint(tmp_path / "foreign.ckpt")
    with pytest.raises(FileNotFoundError):
        verify_checkpoint(tmp_path / "missing.ckpt")


def test_trainer_refuses_to_resume_from_a_corrupt_checkpoint(trained, tmp_path):
    bad = bytearray(trained.read_bytes())
    start, end = _member_spans(trained)[-1]
    bad[(start + end) // 2] ^= 0xFF
    (tmp_path / "bad.ckpt").write_bytes(bytes(bad))
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         plugins=[AtomicCheckpointIO()], enable_checkpointing=False)
    with pytest.raises(ValueError, match="fails its CRC-32 check"):
        trainer.fit(Li2Module(K=6), GroupArithmeticDataModule("Z14", train_fraction=0.5),
                    ckpt_path=tmp_path / "bad.ckpt")


def test_remove_checkpoint_is_safe(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(1.0, 4), tmp_path / "a.ckpt")
    io.remove_checkpoint(tmp_path / "a.ckpt")
    io.remove_checkpoint(tmp_path / "a.ckpt")  # already gone: no error
    assert os.listdir(tmp_path) == []
    assert clean_orphans(tmp_path / "nowhere") == []


def test_a_handed_over_checkpoint_is_loaded_once_and_only_while_the_file_is_unchanged(tmp_path):
    """The CLI verifies --ckpt_path before building anything and hands the result to the trainer's
    CheckpointIO; the trainer's load then returns it instead of a second read, but a file rewritten in
    between is read (and verified) again."""
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint(_ckpt(1.0, 4), path)
    first = verify_checkpoint(path)
    io.keep_verified(path, first)
    assert io.load_checkpoint(path) is first
    assert io.load_checkpoint(path) is not first  # handed over once; later loads read the file
    io.keep_verified(path, first)
    io.save_checkpoint(_ckpt(2.0, 5), path)  # rewritten after the check
    again = io.load_checkpoint(path)
    assert torch.equal(again["state_dict"]["net.W"], torch.full((5,), 2.0))


# --- settings ---------------------------------------------------------------------------------


def test_check_compatible_names_each_differing_setting(trained):
    checkpoint = torch.load(trained, weights_only=True)
    same = Li2Module(K=6, M=14, V_init_scale=0.5)  # V_init_scale only sets the initial values
    dm = GroupArithmeticDataModule("Z14", train_fraction=0.5)
    check_compatible(checkpoint, same.hparams, dm.hparams, torch.optim.Adam(same.parameters()))

    other = Li2Module(K=8, activation="relu", M=14)
    d7 = GroupArithmeticDataModule("D7", train_fraction=0.5)  # the same order, another group
    with pytest.raises(ValueError) as err:
        check_compatible(checkpoint, other.hparams, d7.hparams)
    msg = str(err.value)
    assert "model K: checkpoint 6, config 8" in msg
    assert "model activation: checkpoint 'sqr', config 'relu'" in msg
    assert "data group: checkpoint 'Z14', config 'D7'" in msg
    assert "start fresh" in msg and "config.yaml" in msg
    assert "loss" not in msg and "M:" not in msg  # only what differs is named


def test_check_compatible_names_an_optimizer_change(trained):
    checkpoint = torch.load(trained, weights_only=True)  # trained with Adam
    model = Li2Module(K=6, M=14)
    muon = Muon(list(model.named_parameters()), lr=0.02)
    with pytest.raises(ValueError, match=r"use_muon: checkpoint \[False\], config \[True, False\]"):
        check_compatible(checkpoint, {**model.hparams}, optimizer=muon)
    # a checkpoint that recorded its optimizer: a different Muon preset is named
    checkpoint["li2_optimizer"] = optimizer_signature(muon)
    keller = Muon(list(model.named_parameters()), lr=0.02, preset="keller")
    with pytest.raises(ValueError, match="optimizer preset: checkpoint 'li2', config 'keller'"):
        check_compatible(checkpoint, {**model.hparams}, optimizer=keller)
    check_compatible(checkpoint, {**model.hparams}, optimizer=Muon(list(model.named_parameters()), lr=0.1))


def test_a_setting_missing_from_an_old_checkpoint_is_compared_as_its_default(trained):
    """A hyperparameter added after the checkpoint was written: its default passes, another value is named."""
    from li2_lightning.module import _defaults

    checkpoint = torch.load(trained, weights_only=True)
    del checkpoint["hyper_parameters"]["output_scale"]
    del checkpoint["datamodule_hyper_parameters"]["shuffle_seed"]
    dm = GroupArithmeticDataModule("Z14", train_fraction=0.5)
    model_defaults, data_defaults = _defaults(Li2Module), _defaults(GroupArithmeticDataModule)
    assert model_defaults["output_scale"] == 1.0 and data_defaults["shuffle_seed"] == 0
    check_compatible(checkpoint, Li2Module(K=6, M=14).hparams, dm.hparams,
                     model_defaults=model_defaults, data_defaults=data_defaults)
    with pytest.raises(ValueError) as err:
        check_compatible(checkpoint, Li2Module(K=6, M=14, output_scale=2.0).hparams,
                         GroupArithmeticDataModule("Z14", train_fraction=0.5, shuffle_seed=3).hparams,
                         model_defaults=model_defaults, data_defaults=data_defaults)
    msg = str(err.value)
    assert "model output_scale: checkpoint 1.0 (the default: the checkpoint predates this setting), config 2.0" in msg
    assert "data shuffle_seed: checkpoint 0 (the default" in msg and "config 3" in msg
    # without the defaults, a missing key is itself a difference (the old behaviour, still available)
    with pytest.raises(ValueError, match=r"model output_scale: checkpoint '\(not set\)', config 1.0"):
        check_compatible(checkpoint, Li2Module(K=6, M=14).hparams)


def test_a_resume_through_the_module_accepts_an_old_checkpoint_without_a_new_setting(trained, tmp_path):
    checkpoint = torch.load(trained, weights_only=True)
    del checkpoint["hyper_parameters"]["output_scale"]
    del checkpoint["li2_optimizer"]  # written before the optimizer was recorded
    atomic_save(checkpoint, tmp_path / "old.ckpt")
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         plugins=[AtomicCheckpointIO()], enable_checkpointing=False)
    trainer.fit(Li2Module(K=6), GroupArithmeticDataModule("Z14", train_fraction=0.5), ckpt_path=tmp_path / "old.ckpt")
    assert trainer.current_epoch == 3
