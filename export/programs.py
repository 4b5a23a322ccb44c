"""The two methods every exported L2MU program has, built from one shared single-step core.

`step`    (samples [B, C], counts [B, K], *parts [B, n]) → (counts [B, K], *parts [B, n]): one sample
          for each of B independent chains at O(1) cost each; B is dynamic, 1 … STEP_BATCH_MAX, so the
          agent advances every due chain of every watch in one call. A chain's state is the per-class
          spike counts since it was zero, then every population's membrane (and synaptic current), then
          the previous spikes of h and m, one tensor each — names and sizes in the metadata (`state`).
          They are separate tensors, not one flat row, because XNNPACK cannot slice a tensor whose
          batch dimension is dynamic: slicing a flat state would leave ten ops outside the delegate.
`forward` (window [T, C]) → counts [K]: the same core applied T times from the zero state.

The agent's native runner (l2mu.agent.native) hands tensors across as plain pointers, so one tensor
per part costs it next to nothing, and batching spreads each call's fixed cost over all chains.

Both methods call the same core module (the graph-mode L2MU, or its PT2E-quantised twin), so
`step` applied T times reproduces `forward` exactly: the same operations on the same values in
the same order, down to the counts' summation order (0 + o₀ + o₁ … equals o₀ + o₁ …).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from l2mu.model.l2mu import L2MU

COUNTS_STATE = "counts"
# The most chains one `step` call advances. XNNPACK plans memory for the upper bound (a few hundred KB
# here); 256 covers 128 watches with two 2 s windows in flight each, at one decision per second.
STEP_BATCH_MAX = 256


class StepCore(nn.Module):
    """One time step of the network, batch first: (x_t [B, C], *state) → (output spikes [B, K], *state)."""

    def __init__(self, net: L2MU) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()
        # The graph path: identical values, a few ops per neuron update (see L2MU._fire_for_graph).
        self.net.graph_mode = True

    def forward(self, x_t: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        return self.net.step(x_t, *state)


def state_layout(net: L2MU) -> list[dict]:
    """Name, shape, offset and size of each part of `step`'s flat state, in order, for the metadata."""
    parts = [(COUNTS_STATE, [net.cfg.n_classes])]
    parts += [(n, list(s)) for n, s in zip(net.state_names(), net.state_shapes(1), strict=True)]
    layout, offset = [], 0
    for name, shape in parts:
        size = math.prod(shape)
        layout.append({"name": name, "shape": shape, "offset": offset, "size": size})
        offset += size
    return layout


def state_size(layout: list[dict]) -> int:
    return sum(part["size"] for part in layout)


class StepMethod(nn.Module):
    """`step`: samples [B, C], counts [B, K], *parts [B, n] → (counts so far [B, K], *new parts [B, n])."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, sample: Tensor, counts: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        out, *new_state = self.core(sample, *state)
        return (counts + out, *new_state)


class WindowMethod(nn.Module):
    """`forward`: window [T, C] → per-class spike counts [K], from the zero state."""

    def __init__(self, core: nn.Module, initial_state: list[Tensor]) -> None:
        super().__init__()
        self.core = core
        self.n_state = len(initial_state)
        # Constants rather than zeros() calls: the delegate takes them as static tensors, so no
        # op of the method runs outside XNNPACK.
        for i, z in enumerate(initial_state):
            self.register_buffer(f"state{i}", z.clone(), persistent=False)

    def forward(self, window: Tensor) -> Tensor:
        state = [getattr(self, f"state{i}") for i in range(self.n_state)]
        counts: Tensor | None = None
        for t in range(window.shape[0]):
            # A slice (not window[t]) keeps the batch dimension and is an op XNNPACK runs.
            out, *state = self.core(window[t : t + 1], *state)
            counts = out if counts is None else counts + out
        assert counts is not None, "a window has at least one sample"
        return counts.reshape(-1)


def build_methods(core: nn.Module, net: L2MU) -> dict[str, nn.Module]:
    return {"forward": WindowMethod(core, [torch.zeros(s) for s in net.state_shapes(1)]),
            "step": StepMethod(core)}


def example_inputs(net: L2MU, window_samples: int) -> dict[str, tuple[Tensor, ...]]:
    """Example inputs each method is traced with (only their shapes matter; see dynamic_shapes)."""
    c = net.cfg.n_channels
    parts = [torch.zeros(2, p["size"]) for p in state_layout(net)]
    return {"forward": (torch.zeros(window_samples, c),), "step": (torch.zeros(2, c), *parts)}


def dynamic_shapes(net: L2MU) -> dict[str, object]:
    """`step`'s batch dimension is symbolic (1 … STEP_BATCH_MAX); `forward` is one fixed-size window."""
    batch = torch.export.Dim("batch", min=1, max=STEP_BATCH_MAX)
    n_parts = len(state_layout(net))
    # (sample, counts, *state): the varargs' shapes form one tuple.
    return {"forward": None, "step": ({0: batch}, {0: batch}, tuple({0: batch} for _ in range(n_parts - 1)))}
