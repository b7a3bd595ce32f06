"""`li2 sweep --wandb`: one offline W&B run per finished point, read back from its .wandb file."""

import glob
import json

import pytest
import yaml

from li2_lightning.sweep import load_sweep, main

pytest.importorskip("wandb")


def test_each_point_is_a_wandb_run_with_config_and_curves(tmp_path, monkeypatch):
    from li2_lightning.wandb_offline import iter_records, read_config, read_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "wb", "population_size": 2, "accelerator": "cpu",
                                    "wandb": {"project": "li2-test"},
                                    "fixed": {"data.group": "Z5", "model.K": 8, "trainer.max_epochs": 12,
                                              "model.optimizer.init_args.lr": 0.01},
                                    "grid": {"seed_everything": [0, 3]}}))
    main([str(path), "--no-progress"])
    rows = {r["point"]["seed"]: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    runs = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(runs) == 2
    seen = set()
    for run in runs:
        config = read_config(run)
        seed = config["seed_everything"]
        seen.add(seed)
        row = rows[seed]
        assert config["data.group"] == "Z5" and config["model.K"] == 8 and config["trainer.max_epochs"] == 12
        assert config["model.optimizer.init_args.lr"] == 0.01 and config["data.split_seed"] == seed
        assert config["model.optimizer.class_path"] == "torch.optim.Adam"
        history = read_history(run)
        assert [h["epoch"] for h in history] == list(range(12))
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert [h[key] for h in history] == pytest.approx(row["curves"][key], abs=1e-7), key
        run_info = [r.run for r in iter_records(run) if r.WhichOneof("record_type") == "run"]
        assert run_info and run_info[0].run_group == "wb" and run_info[0].job_type == "sweep-point"
        assert run_info[0].project == "li2-test"
    assert seen == {0, 3}


def test_wandb_setting_is_validated(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"wandb": "li2", "fixed": {"group": "Z5"}, "grid": {"seed": [0]}}))
    with pytest.raises(ValueError, match="wandb='li2' is not accepted; accepted: a mapping with `project`"):
        load_sweep(path)
