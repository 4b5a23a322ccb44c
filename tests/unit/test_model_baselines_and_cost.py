"""Non-spiking baselines in the same pipeline, hyper-parameter overrides, and SynOps counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2mu.model.baselines import BaselineConfig, GRUClassifier, LMUClassifier
from l2mu.model.l2mu import L2MU, L2MUConfig
from l2mu.model.synops import count_synops


def test_lmu_baseline_memory_is_the_l2mu_legendre_memory() -> None:
    lmu = LMUClassifier(BaselineConfig(order=6, theta=30))
    l2mu = L2MU(L2MUConfig(order=6, theta=30))
    assert torch.equal(lmu.memory.A_bar, l2mu.memory.A_bar)
    assert torch.equal(lmu.memory.B_bar, l2mu.memory.B_bar)


def test_gru_mac_count_matches_its_weight_shapes() -> None:
    gru = GRUClassifier(BaselineConfig(arch="gru", n_channels=6, hidden=10, n_classes=7))
    per_step = gru.gru.weight_ih_l0.numel() + gru.gru.weight_hh_l0.numel()
    assert gru.macs_per_window(40) == 40 * per_step + 10 * 7


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


def test_synops_rates_count_network_steps_and_input_macs_count_samples_and_taps() -> None:
    torch.manual_seed(0)
    cfg = L2MUConfig(hidden=16, input_hidden=16, n_classes=3, output_population=2, substeps=3, theta=120.0,
                     input_taps=2)
    model = L2MU(cfg).eval()
    windows = np.random.default_rng(0).normal(0, 2, size=(4, 40, 6)).astype(np.float32)
    cost = count_synops(model, windows)
    sizes = model.population_sizes()
    for pop in ("h", "out"):  # 40 samples, each held for 3 network steps
        assert cost["firing_rate"][pop] == pytest.approx(cost["spikes_per_window"][pop] / (120 * sizes[pop]))
    assert cost["neuron_updates_per_window"] == 120 * sum(sizes.values())
    assert cost["input_macs_per_window"] == 40 * 2 * sizes["inj"]
    assert 0 < cost["firing_rate"]["h"] < 1
