"""Trained L2MU checkpoint → ExecuTorch program (.pte) + the metadata the agent needs beside it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from l2mu.model.checkpoint import Checkpoint
from l2mu.model.l2mu import L2MU
from l2mu.model.metadata import ModelMetadata, write_metadata


class WindowMethod(nn.Module):
    """forward: one normalised window [T, C] → per-class spike counts [n_classes]."""

    def __init__(self, net: L2MU) -> None:
        super().__init__()
        self.net = net

    def forward(self, window: Tensor) -> Tensor:
        return self.net(window.unsqueeze(0))[0]


class StepMethod(nn.Module):
    """step: one normalised sample [C] + state → (output spikes [n_classes], *new state)."""

    def __init__(self, net: L2MU) -> None:
        super().__init__()
        self.net = net

    def forward(self, sample: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        out, *new_state = self.net.step(sample.unsqueeze(0), *state)
        return (out[0], *new_state)


def export_program(ckpt: Checkpoint, out: Path, delegate: bool = True) -> ModelMetadata:
    """Write ``out`` (.pte) and its metadata JSON; returns the metadata written."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    net = copy.deepcopy(ckpt.model).eval()
    net.graph_mode = True
    meta = ckpt.metadata
    window = torch.zeros(meta.window_samples, len(meta.channels))
    state = tuple(s for s in net.initial_state(1))
    with torch.no_grad():
        programs = {
            "forward": torch.export.export(WindowMethod(net), (window,), strict=False),
            "step": torch.export.export(StepMethod(net), (window[0], *state), strict=False),
        }
    partitioners = [XnnpackPartitioner()] if delegate else []
    edge = to_edge_transform_and_lower(programs, partitioner=partitioners)
    program = edge.to_executorch()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        program.write_to_file(fh)
    tmp.replace(out)
    return write_metadata(out, meta, net)
