"""The two methods every exported L2MU program has, built from one shared single-step core.

`step`    (sample [C], state [S]) → (counts [K], state [S]): one sample at O(1) cost. The state is
          one flat vector: the per-class spike counts since it was zero, then every population's
          membrane (and synaptic current), then the previous spikes of h and m — the layout, with
          offsets, is in the metadata (`state`). The counts come out twice: on their own, and as
          the head of the new state that the next call takes.
`forward` (window [T, C]) → counts [K]: the same core applied T times from the zero state.

One flat state instead of one tensor per population: each tensor crossing the Python binding
costs about 2 µs, more than the step's own arithmetic (measured: 11 tensors in and out 23.6 µs,
2 tensors 7.2 µs, for an add). Splitting and joining the vector happens inside the delegate.

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
    """`step`: sample [C], flat state [S] → (counts so far [K], new flat state [S])."""

    def __init__(self, core: nn.Module, layout: list[dict]) -> None:
        super().__init__()
        self.core = core
        self.parts = [(p["offset"], p["size"], tuple(p["shape"])) for p in layout]

    def forward(self, sample: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        counts, *net_state = (state[o : o + n].reshape(shape) for o, n, shape in self.parts)
        out, *new_state = self.core(sample.reshape(1, -1), *net_state)
        counts = counts + out.reshape(-1)
        return counts, torch.cat([counts, *(s.reshape(-1) for s in new_state)])


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
            "step": StepMethod(core, state_layout(net))}


def example_inputs(net: L2MU, window_samples: int) -> dict[str, tuple[Tensor, ...]]:
    """Example inputs each method is traced with (only their shapes matter)."""
    c = net.cfg.n_channels
    return {"forward": (torch.zeros(window_samples, c),),
            "step": (torch.zeros(c), torch.zeros(state_size(state_layout(net))))}
