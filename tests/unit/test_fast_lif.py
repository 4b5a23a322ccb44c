"""The fast training path (layer-wise, `LIFSequence`, `lif_update`) is snnTorch's network: equal
forward values and equal gradients for every parameter, for LIF and current-based LIF."""

from __future__ import annotations

import pytest
import torch

from l2mu.model.l2mu import L2MU, L2MUConfig, LIFSequence, lif_update


def _values_and_grads(net: L2MU, x: torch.Tensor, snntorch: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.use_snntorch = snntorch
    out = net(x)
    # A loss that weighs classes differently, so every gradient path is exercised.
    loss = (out * torch.arange(1, out.shape[1] + 1)).square().sum()
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    return out.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(net.parameters(), grads,
                                                                              strict=True)]


@pytest.mark.parametrize(("neuron", "input_taps"), [("leaky", 1), ("synaptic", 1), ("leaky", 2)])
def test_fast_path_equals_snntorch_values_and_gradients(neuron: str, input_taps: int) -> None:
    torch.manual_seed(3)
    net = L2MU(L2MUConfig(neuron=neuron, input_hidden=24, hidden=20, memory_size=4, order=4, input_taps=input_taps))
    if net.inj_gain_delayed is not None:
        with torch.no_grad():  # away from its zero start, so the delayed synapse shapes the spikes
            net.inj_gain_delayed.normal_()
    x = torch.randn(12, 30, 6) * 2
    ref_out, ref_grads = _values_and_grads(net, x, snntorch=True)
    fast_out, fast_grads = _values_and_grads(net, x, snntorch=False)
    assert ref_out.sum() > 0, "the network must spike for the comparison to mean anything"
    torch.testing.assert_close(fast_out, ref_out, rtol=0, atol=0)
    names = [n for n, _ in net.named_parameters()]
    for name, g_ref, g_fast in zip(names, ref_grads, fast_grads, strict=True):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5 * (1 + g_ref.abs().max().item()),
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The neuron parameters themselves (β, ϑ, α) must receive gradient, not only the synapses.
    assert any(g.abs().sum() > 0 for n, g in zip(names, fast_grads, strict=True) if n.endswith("threshold"))
    if input_taps == 2:
        assert fast_grads[names.index("inj_gain_delayed")].abs().sum() > 0


@pytest.mark.parametrize("synaptic", [False, True])
def test_lif_sequence_equals_stepwise_update_in_value_and_gradient(synaptic: bool) -> None:
    from l2mu.model.l2mu import _population

    torch.manual_seed(1)
    lif = _population(L2MUConfig(neuron="synaptic" if synaptic else "leaky"), 0.7)
    currents = (torch.randn(5, 25, 9) * 1.5).requires_grad_()
    params = [currents, lif.beta, lif.threshold] + ([lif.alpha] if synaptic else [])
    seq = LIFSequence.apply(currents, lif.beta, lif.threshold, lif.alpha if synaptic else None)
    weights = torch.randn_like(seq)
    g_seq = torch.autograd.grad((seq * weights).sum(), params)
    state = [torch.zeros(5, 9)] * (2 if synaptic else 1)
    spikes = []
    for current in currents.unbind(1):
        spk, state = lif_update(lif, current, state)
        spikes.append(spk)
    step = torch.stack(spikes, 1)
    g_step = torch.autograd.grad((step * weights).sum(), params)
    torch.testing.assert_close(seq, step, rtol=0, atol=0)
    assert 0 < seq.mean() < 1
    for a, b in zip(g_seq, g_step, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_layerwise_rates_count_the_spikes_of_each_population() -> None:
    torch.manual_seed(0)
    net = L2MU(L2MUConfig(input_hidden=16, hidden=16, memory_size=4, order=4)).eval()
    x = torch.randn(4, 20, 6) * 2
    with torch.no_grad():
        counts, rates = net.forward_layerwise(x)
    spikes: dict[str, float] = {}
    hooks = [lif.register_forward_hook(lambda _m, _a, out, pop=pop: spikes.__setitem__(
        pop, spikes.get(pop, 0.0) + float(out[0].detach().sum()))) for pop, lif in net.lif.items()]
    net.use_snntorch = True
    torch.testing.assert_close(net(x), counts)
    for h in hooks:
        h.remove()
    sizes = net.population_sizes()
    for pop in ("u", "m", "h", "out"):
        assert float(rates[pop].mean()) == pytest.approx(spikes[pop] / (4 * 20 * sizes[pop]), rel=1e-5), pop
