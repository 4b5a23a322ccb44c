"""Baselines through the commands: train, save, evaluate; --set overrides and their one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from l2mu.model.baselines import GRUClassifier, LMUClassifier
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.train import TrainConfig, train
from tests.conftest import cli_command


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lmu", "gru"])
def test_baseline_trains_saves_and_evaluates_like_the_l2mu(arch: str, wisdm_root: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=wisdm_root, out=tmp_path, arch=arch, epochs=1, subjects=[1600, 1604],
                      val_subjects=[1604], max_steps_per_epoch=3, batch_size=32, model={"hidden": 16})
    report = train(cfg, progress=False)
    assert report["model"] == f"hand7-acc-gyro-{arch}"
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert type(ckpt.model) is {"lmu": LMUClassifier, "gru": GRUClassifier}[arch]
    assert ckpt.model.cfg.hidden == 16
    done = subprocess.run(
        [*cli_command(), "evaluate", "--data", str(wisdm_root), "--model", str(tmp_path / "checkpoint.pt"),
         "--subjects", "1608", "--json"], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n_windows"] > 100
    assert result["cost"]["params"] == sum(p.numel() for p in ckpt.model.parameters())
    assert result["cost"]["macs_per_window"] == ckpt.model.macs_per_window(40)


def test_set_overrides_reach_the_model_and_bad_keys_are_one_line_errors(wisdm_root: Path, tmp_path: Path) -> None:
    base = [*cli_command(), "train", "--data", str(wisdm_root), "--out", str(tmp_path), "--subjects", "1600,1604",
            "--val-subjects", "1604", "--epochs", "1", "--max-steps-per-epoch", "1"]
    done = subprocess.run([*base, "--set", "hidden=12", "--set", "theta=20"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    cfg = load_checkpoint(tmp_path / "checkpoint.pt").model.cfg
    assert (cfg.hidden, cfg.theta) == (12, 20.0)
    for bad, says in (("hiden=3", "KEY one of"), ("hidden=big", "hidden must be int"), ("neuron=x", "KEY one of")):
        done = subprocess.run([*base, "--set", bad], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2
        assert done.stderr.strip().startswith("error:") and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
