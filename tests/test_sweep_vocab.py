"""Sweep points in the training config's vocabulary, and `--fit-command`: point I through `li2 fit`."""

import csv
import json
import math
import shlex

import pytest
import yaml

from li2_lightning.sweep import expand, fit_command, load_sweep, main, point_id, run_sweep


def _write(folder, spec, name="s.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


SHORT = {"population_size": 3, "accelerator": "cpu",
         "fixed": {"group": "Z5", "K": 8, "max_epochs": 40, "lr": 1e-2, "optimizer": "adamw", "weight_decay": 1e-3},
         "grid": {"seed": [0, 1, 2], "train_fraction": [0.6]}}
LONG = {"population_size": 3, "accelerator": "cpu",
        "fixed": {"data.group": "Z5", "model.K": 8, "trainer.max_epochs": 40, "model.optimizer.init_args.lr": 1e-2,
                  "model.optimizer.class_path": "torch.optim.AdamW", "model.optimizer.init_args.weight_decay": 1e-3},
        "grid": {"seed_everything": [0, 1, 2], "data.train_fraction": [0.6]}}


def test_config_keys_and_short_keys_give_the_same_points(tmp_path):
    short = expand(load_sweep(_write(tmp_path, SHORT, "a.yaml")))
    long = expand(load_sweep(_write(tmp_path, LONG, "b.yaml")))
    assert [point_id(p) for p in long] == [point_id(p) for p in short]
    assert long[1] == {"group": "Z5", "K": 8, "max_epochs": 40, "lr": 1e-2, "optimizer": "adamw",
                       "weight_decay": 1e-3, "seed": 1, "train_fraction": 0.6}


def test_muon_lr_names_follow_the_optimizer(tmp_path):
    spec = {"fixed": {"data.group": "Z5", "model.optimizer.class_path": "li2_lightning.optim.Muon",
                      "model.optimizer.init_args.lr": 0.02, "model.optimizer.init_args.adam_lr": 0.001},
            "grid": {"seed_everything": [0]}}
    (p,) = expand(load_sweep(_write(tmp_path, spec)))
    assert p["optimizer"] == "muon" and p["muon_lr"] == 0.02 and p["lr"] == 0.001
    spec["fixed"]["model.optimizer.class_path"] = "torch.optim.Adam"
    with pytest.raises(ValueError, match="adam_lr.*Muon only"):
        load_sweep(_write(tmp_path, spec))


def test_unknown_config_key_is_named(tmp_path):
    spec = {"fixed": {"data.group": "Z5", "model.width": 8}, "grid": {"seed_everything": [0]}}
    with pytest.raises(ValueError, match="model.width.*not known.*model.K"):
        load_sweep(_write(tmp_path, spec))


def _csv_epochs(folder):
    """Per-epoch train/val metrics from a CSVLogger metrics.csv (read with csv, not the code under test)."""
    (path,) = folder.rglob("metrics.csv")
    out = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            e = int(row["epoch"])
            for k in ("train/loss", "train/acc", "val/loss", "val/acc"):
                if row.get(k):
                    out.setdefault(k, {})[e] = float(row[k])
    return {k: [v[e] for e in sorted(v)] for k, v in out.items()}


def test_fit_command_reruns_the_point_with_its_curves(tmp_path, capsys):
    """Point 1's per-epoch curves from the population equal the printed `li2 fit` run's (Lightning CLI)."""
    from li2_lightning.cli import run_cli

    path = _write(tmp_path, LONG)
    run_sweep(path, progress=False)
    (row,) = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()
              if json.loads(line)["point"]["seed"] == 1]
    main([str(path), "--fit-command", "1"])
    words = shlex.split(capsys.readouterr().out.strip())
    assert words[:2] == ["li2", "fit"] and words == shlex.split(fit_command(path, 1))
    assert "--seed_everything" in words and "--data.split_seed" in words  # base.yaml's split seed 1 overridden
    run_cli(words[1:] + ["--trainer.accelerator", "cpu", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                         "--trainer.logger.save_dir", str(tmp_path / "fit")])
    got = _csv_epochs(tmp_path / "fit")
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        want = row["curves"][key]
        assert len(got[key]) == len(want) == 40, key
        diff = max(abs(a - b) for a, b in zip(got[key], want))
        assert diff <= 2e-5, (key, diff)
    assert not math.isclose(got["val/acc"][0], got["val/acc"][-1])  # the curves move: a real comparison
