"""The L2MU network: LMU system matrices, memory update direction, export graph = snnTorch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre
from scipy.linalg import expm
from scipy.signal import cont2discrete

from l2mu.model.l2mu import L2MU, L2MUConfig, LegendreMemory, legendre_state_space


def test_zoh_matrices_equal_scipy_and_the_matrix_exponential() -> None:
    order, theta = 6, 40.0
    a, b = legendre_state_space(order, theta)
    mem = LegendreMemory(order, theta)
    ad, bd, *_ = cont2discrete((a, b, np.eye(order), np.zeros((order, 1))), dt=1.0, method="zoh")
    np.testing.assert_allclose(mem.A_bar.numpy(), ad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mem.B_bar.numpy(), bd[:, 0], rtol=1e-5, atol=1e-7)
    # Independently: exp([[A, B], [0, 0]]) holds Ā and B̄ for a unit step.
    block = np.zeros((order + 1, order + 1))
    block[:order, :order], block[:order, order:] = a, b
    e = expm(block)
    np.testing.assert_allclose(mem.A_bar.numpy(), e[:order, :order], rtol=1e-5, atol=1e-7)


def test_voelker_matrices_first_entries() -> None:
    a, b = legendre_state_space(3, 1.0)
    # A[i, j] = (2i+1)·(-1 if i < j else (-1)^(i-j+1)); B[i] = (2i+1)·(-1)^i
    np.testing.assert_array_equal(a, [[-1, -1, -1], [3, -3, -3], [-5, 5, -5]])
    np.testing.assert_array_equal(b[:, 0], [1, -3, 5])


def test_memory_update_applies_a_bar_not_its_transpose() -> None:
    mem = LegendreMemory(5, 10.0)
    m = torch.randn(3, 2, 5)
    u = torch.randn(3, 2)
    got = mem(m, u)
    want = torch.einsum("ij,bkj->bki", mem.A_bar, m) + u[..., None] * mem.B_bar
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    transposed = torch.einsum("ji,bkj->bki", mem.A_bar, m) + u[..., None] * mem.B_bar
    assert not torch.allclose(got, transposed, atol=1e-3)


@pytest.mark.parametrize("theta_prime", [10.0, 20.0, 30.0])
def test_non_spiking_legendre_memory_reconstructs_the_delayed_input(theta_prime: float) -> None:
    order, theta, steps = 12, 40.0, 400
    mem = LegendreMemory(order, theta)
    def f(t: np.ndarray) -> np.ndarray:
        return np.sin(2 * np.pi * t / 90.0) + 0.5 * np.sin(2 * np.pi * t / 57.0)

    t = np.arange(steps)
    u = f(t)
    m = torch.zeros(1, 1, order)
    decoded = []
    # Shifted Legendre polynomials P̃_i(θ'/θ) decode u(t − θ') from the memory (Voelker et al. 2019).
    r = theta_prime / theta
    weights = np.array([legendre.legval(2 * r - 1, np.eye(order)[i]) for i in range(order)])
    for k in range(steps):
        m = mem(m, torch.tensor([[u[k]]], dtype=torch.float32))
        decoded.append(float(m[0, 0].numpy() @ weights))
    # After the update with u[k] (held over [k, k+1) by ZOH) the memory describes time k+1; the
    # held input then matches the smooth signal half a step earlier, hence k + 0.5 − θ'.
    err = np.abs(np.array(decoded)[100:] - f(t[100:] + 0.5 - theta_prime))
    assert err.max() < 0.01
    # A wrong delay would be caught: one step off already costs more than that.
    assert np.abs(np.array(decoded)[100:] - f(t[100:] - 0.5 - theta_prime)).max() > 0.05


@pytest.mark.parametrize(("neuron", "substeps", "input_taps"),
                         [("leaky", 1, 1), ("synaptic", 1, 1), ("leaky", 3, 1), ("leaky", 1, 2), ("synaptic", 3, 2)])
def test_export_graph_equals_snntorch_modules_and_step_equals_forward(neuron: str, substeps: int,
                                                                      input_taps: int) -> None:
    torch.manual_seed(1)
    net = L2MU(L2MUConfig(neuron=neuron, input_hidden=24, hidden=24, memory_size=4, order=6, substeps=substeps,
                          theta=40.0 * substeps, input_taps=input_taps)).eval()
    if net.inj_gain_delayed is not None:
        with torch.no_grad():
            net.inj_gain_delayed.normal_()
    x = torch.randn(5, 40, 6) * 1.5
    with torch.no_grad():
        counts = net(x)
        net.graph_mode = True
        graph_counts = net(x)
        state = net.initial_state(5)
        stepped = torch.zeros_like(counts)
        for t in range(40):
            out, *state = net.step(x[:, t], *state)
            stepped += out
    assert counts.sum() > 0, "network should spike for this input"
    torch.testing.assert_close(graph_counts, counts)
    torch.testing.assert_close(stepped, counts)
    assert len(state) == len(net.state_names())
    if substeps > 1 and input_taps == 1:  # each sample held for `substeps` steps: the plain network, repeated window
        plain = L2MU(L2MUConfig(neuron=neuron, input_hidden=24, hidden=24, memory_size=4, order=6,
                                theta=40.0 * substeps)).eval()
        plain.load_state_dict(net.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(plain(x.repeat_interleave(substeps, dim=1)), counts)


def test_delayed_input_synapse_delivers_the_previous_sample_to_the_input_currents() -> None:
    torch.manual_seed(2)
    cfg = L2MUConfig(input_hidden=24, hidden=24, memory_size=4, order=6)
    plain, tapped = L2MU(cfg).eval(), L2MU(replace(cfg, input_taps=2)).eval()
    tapped.load_state_dict({**plain.state_dict(), "inj_gain_delayed": torch.zeros_like(plain.inj_gain)})
    x = torch.randn(4, 40, 6) * 1.5
    with torch.no_grad():
        torch.testing.assert_close(tapped(x), plain(x), rtol=0, atol=0)  # delayed synapse at zero: the paper's module
        tapped.inj_gain_delayed.copy_(-plain.inj_gain)
        # g·x_t − g·x_{t−1} + b: a constant window drives every neuron by its bias alone after the first sample,
        # which is what the plain network sees for a window of zeros after the first sample's own current.
        constant = x[:, :1].expand(-1, 40, -1)
        zeros_after_first = torch.cat([constant[:, :1], torch.zeros_like(constant[:, 1:])], 1)
        assert not torch.equal(tapped(constant), plain(constant))
        torch.testing.assert_close(tapped(constant), plain(zeros_after_first), rtol=0, atol=0)
    with pytest.raises(ValueError, match="input_taps"):
        L2MU(replace(cfg, input_taps=3))


def test_differentiator_neurons_start_silent_at_any_level_and_count_movement_amplitude() -> None:
    torch.manual_seed(3)
    net = L2MU(L2MUConfig(n_channels=3, input_hidden=24, hidden=24, memory_size=4, order=6, input_taps=2)).eval()

    def differentiator_spikes(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            spikes = net._lif_run("inj", net.window_input_currents(x))
        return spikes.reshape(*spikes.shape[:2], 3, -1)[..., 1::2]

    # A watch held still at any orientation: after the first sample (whose delayed tap is still at rest, so
    # g·x_0 arrives once and discharges over up to ~20 steps at gain 30) the differentiators get no current.
    still = torch.linspace(-3, 3, 7).reshape(7, 1, 1).expand(7, 60, 3).contiguous()
    assert differentiator_spikes(still)[:, 1].sum() > 0
    assert differentiator_spikes(still)[:, 30:].sum() == 0
    levels = still[:, :40]
    # Moving around those same levels: more amplitude, more differentiator spikes, at every level.
    t = torch.arange(40.0).reshape(1, 40, 1)
    counts = [differentiator_spikes(levels + a * torch.sin(2 * torch.pi * 3 * t / 20)).sum((1, 2, 3))
              for a in (0.05, 0.2, 1.0)]
    assert (counts[0] < counts[1]).all() and (counts[1] < counts[2]).all()
    assert (net.inj_bias[:, 1::2] == 0).all() and net.inj_gain[:, 1::2].abs().max() > 5


def test_unknown_neuron_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown neuron type"):
        L2MU(L2MUConfig(neuron="izhikevich"))


def test_training_signal_reaches_every_population() -> None:
    torch.manual_seed(0)
    net = L2MU(L2MUConfig(neuron="leaky"))
    loss = torch.nn.functional.cross_entropy(net(torch.randn(16, 40, 6) * 2), torch.randint(0, 7, (16,)))
    loss.backward()
    for name in ("inj_gain", "fc_in1.weight", "e_x.weight", "w_m.weight", "fc_out.weight", "lif.h.beta",
                 "lif.out.threshold"):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
