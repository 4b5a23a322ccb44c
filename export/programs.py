"""The two methods every exported L2MU program has, built from one shared single-step core.

`step`    (samples [B, C], counts [B, K], *parts [B, n]) → (counts [B, K], *parts [B, n]): one sample
          for each of B independent chains at O(1) cost each; B is dynamic, 1 … STEP_BATCH_MAX, so the
          agent advances every due chain of every watch in one call. A chain's state is the per-class
          spike counts since it was zero, then every population's membrane (and synaptic current), then
          the previous spikes of h and m, one tensor each — names and sizes in the metadata (`state`).
          They are separate tensors, not one flat row, because XNNPACK cannot slice a tensor whose
          batch dimension is dynamic: slicing a flat state would leave ten ops outside the delegate.
`chunk`   (samples [S, C], counts [1, K], *parts [1, n]) → (counts [1, K], *parts [1, n]): one chain
          through S consecutive samples, the same core applied S times; a window is T / S calls of it from
          the zero state (`chunk_samples` in the metadata). A window is not unrolled into one graph: XNNPACK
          reshapes and walks every operator of a method on every call, and a graph of 120 network steps (3 per
          sample) outgrew the core's caches — 5.9 ms per window, against 2.1 ms for the same work as 40
          separate step calls (measured on this project's 2-core AMD EPYC machine).

The agent's native runner (l2mu.agent.native) hands tensors across as plain pointers, so one tensor
per part costs it next to nothing, and batching spreads each call's fixed cost over all chains.

Both methods call the same core module (the graph-mode L2MU), so `step` applied T times reproduces the
chunks exactly: the same operations on the same values in the same order, the counts' summation included.
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
# The most network steps one `chunk` call unrolls: 40 (a one-step program's whole window in one call) ran at
# full speed where 120 did not (see above).
CHUNK_NETWORK_STEPS = 40


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


class ChunkMethod(nn.Module):
    """`chunk`: one chain's samples [S, C], counts [1, K], *parts [1, n] → (counts, *parts) after all S."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.step = StepMethod(core)

    def forward(self, samples: Tensor, counts: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        for t in range(samples.shape[0]):
            # A slice (not samples[t]) keeps the batch dimension and is an op XNNPACK runs.
            counts, *state = self.step(samples[t : t + 1], counts, *state)
        return (counts, *state)


def chunk_samples(net: L2MU, window_samples: int) -> int:
    """Samples per `chunk` call: the largest divisor of the window within CHUNK_NETWORK_STEPS network steps."""
    fitting = [s for s in range(1, window_samples + 1)
               if window_samples % s == 0 and s * net.cfg.substeps <= CHUNK_NETWORK_STEPS]
    return max(fitting, default=1)


def build_methods(core: nn.Module) -> dict[str, nn.Module]:
    return {"chunk": ChunkMethod(core), "step": StepMethod(core)}


def example_inputs(net: L2MU, window_samples: int) -> dict[str, tuple[Tensor, ...]]:
    """Example inputs each method is traced with (only their shapes matter; see dynamic_shapes)."""
    c = net.cfg.n_channels
    layout = state_layout(net)
    return {"chunk": (torch.zeros(chunk_samples(net, window_samples), c), *[torch.zeros(1, p["size"]) for p in layout]),
            "step": (torch.zeros(2, c), *[torch.zeros(2, p["size"]) for p in layout])}


def dynamic_shapes(net: L2MU) -> dict[str, object]:
    """`step`'s batch dimension is symbolic (1 … STEP_BATCH_MAX); `chunk` has fixed shapes."""
    batch = torch.export.Dim("batch", min=1, max=STEP_BATCH_MAX)
    n_parts = len(state_layout(net))
    # (sample, counts, *state): the varargs' shapes form one tuple.
    return {"chunk": None, "step": ({0: batch}, {0: batch}, tuple({0: batch} for _ in range(n_parts - 1)))}
