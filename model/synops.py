"""Synaptic operations (SynOps) of an L2MU, counted on real windows.

A SynOp is one spike delivered along one existing synapse: a spike of neuron j costs as many
SynOps as j has non-zero outgoing weights. That is the unit neuromorphic hardware pays for and
the one the paper reports; counting non-zero weights (not the layer's width) makes pruning show
up. The encoding-free input module multiplies real sensor values by a gain, which is a MAC per
input neuron and step, not a SynOp; it is reported separately, like the per-step neuron updates.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import Tensor, nn

from l2mu.model.l2mu import L2MU, LegendreMemory


def _fan_out(weight: Tensor) -> Tensor:
    """Non-zero outgoing synapses per input neuron of y = x Wᵀ (weight [out, in])."""
    return (weight != 0).sum(0).to(torch.float64)


@torch.no_grad()
def count_synops(model: L2MU, windows: np.ndarray, batch: int = 256) -> dict:
    """Average SynOps, input MACs, neuron updates and spikes per population, per window.

    windows: normalised [W, T, C]; the model runs in eval mode with its snnTorch neurons."""
    if len(windows) == 0:
        raise ValueError("count_synops needs at least one window")
    synops: dict[str, float] = defaultdict(float)
    spikes: dict[str, float] = defaultdict(float)
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            def linear_hook(mod: nn.Module, args: tuple, _out: Tensor, name: str = name) -> None:
                synops[name] += float((args[0].to(torch.float64) @ _fan_out(mod.weight)).sum())
            hooks.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, LegendreMemory):
            def memory_hook(mod: nn.Module, args: tuple, _out: Tensor, name: str = name) -> None:
                m_prev, u = args
                from_m = (m_prev.to(torch.float64) @ _fan_out(mod.A_bar)).sum()
                from_u = u.to(torch.float64).sum() * float((mod.B_bar != 0).sum())
                synops[name] += float(from_m + from_u)
            hooks.append(module.register_forward_hook(memory_hook))
    for pop, lif in model.lif.items():
        def spike_hook(_mod: nn.Module, _args: tuple, out: tuple, pop: str = pop) -> None:
            spikes[pop] += float(out[0].sum())
        hooks.append(lif.register_forward_hook(spike_hook))
    was_training, graph_mode, use_snntorch = model.training, model.graph_mode, model.use_snntorch
    model.eval()
    model.graph_mode, model.use_snntorch = False, True  # the spike hooks need the snnTorch modules to run
    try:
        for i in range(0, len(windows), batch):
            model(torch.from_numpy(np.ascontiguousarray(windows[i : i + batch], dtype=np.float32)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        model.graph_mode, model.use_snntorch = graph_mode, use_snntorch
    cfg = model.cfg
    # Network steps, not samples: each sample is held for `substeps` steps. Its input current is
    # computed once per sample, one MAC per tap and input neuron.
    n, samples = len(windows), windows.shape[1]
    steps = samples * cfg.substeps
    sizes = model.population_sizes()
    # What the same network would cost evaluated densely (every weight every step), for scale.
    dense_per_step = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    dense_per_step += cfg.memory_size * (cfg.order * cfg.order + cfg.order)
    return {
        "synops_per_window": sum(synops.values()) / n,
        "synops_by_layer": {k: v / n for k, v in sorted(synops.items())},
        "input_macs_per_window": samples * cfg.input_taps * sizes["inj"],
        "dense_macs_per_window": steps * dense_per_step + samples * cfg.input_taps * sizes["inj"],
        "neuron_updates_per_window": steps * sum(sizes.values()),
        "spikes_per_window": {k: spikes[k] / n for k in sizes},
        "firing_rate": {k: spikes[k] / (n * steps * sizes[k]) for k in sizes},
        "windows": n,
    }


def compute_cost(model: nn.Module, windows: np.ndarray) -> dict:
    """SynOps for an L2MU; dense MACs for the non-spiking baselines (which have no spikes to count)."""
    params = sum(p.numel() for p in model.parameters())
    if isinstance(model, L2MU):
        return {"params": params, **count_synops(model, windows)}
    return {"params": params, "macs_per_window": model.macs_per_window(windows.shape[1])}
