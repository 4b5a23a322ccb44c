"""Non-spiking baselines in the same pipeline, hyper-parameter overrides, and SynOps counting."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from l2mu.model.baselines import BaselineConfig, GRUClassifier, LMUClassifier
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.l2mu import L2MU, L2MUConfig
from l2mu.model.synops import count_synops
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


def test_lmu_baseline_memory_is_the_l2mu_legendre_memory() -> None:
    lmu = LMUClassifier(BaselineConfig(order=6, theta=30))
    l2mu = L2MU(L2MUConfig(order=6, theta=30))
    assert torch.equal(lmu.memory.A_bar, l2mu.memory.A_bar)
    assert torch.equal(lmu.memory.B_bar, l2mu.memory.B_bar)


def test_gru_mac_count_matches_its_weight_shapes() -> None:
    gru = GRUClassifier(BaselineConfig(arch="gru", n_channels=6, hidden=10, n_classes=7))
    per_step = gru.gru.weight_ih_l0.numel() + gru.gru.weight_hh_l0.numel()
    assert gru.macs_per_window(40) == 40 * per_step + 10 * 7


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


def test_synops_count_spikes_times_existing_synapses() -> None:
    torch.manual_seed(0)
    model = L2MU(L2MUConfig(hidden=16, input_hidden=16, n_classes=3, output_population=2)).eval()
    windows = np.random.default_rng(0).normal(0, 2, size=(8, 40, 6)).astype(np.float32)
    dense = count_synops(model, windows)
    out_fan = 3 * 2
    assert dense["spikes_per_window"]["h"] > 0
    assert dense["synops_by_layer"]["fc_out"] == pytest.approx(dense["spikes_per_window"]["h"] * out_fan)
    assert dense["synops_per_window"] == pytest.approx(sum(dense["synops_by_layer"].values()))
    with torch.no_grad():
        model.fc_out.weight[::2] = 0  # half the output neurons lose every input synapse
    pruned = count_synops(model, windows)
    assert pruned["synops_by_layer"]["fc_out"] == pytest.approx(dense["spikes_per_window"]["h"] * out_fan / 2)
    assert pruned["synops_by_layer"]["w_x"] == pytest.approx(dense["synops_by_layer"]["w_x"])
    assert 0 < dense["firing_rate"]["m"] < 1
