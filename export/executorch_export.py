"""Trained L2MU checkpoint → ExecuTorch program (.pte) + the metadata the agent needs beside it.

One program, two methods (see l2mu.export.programs): `chunk` (one chain through a run of samples; a window
is a few calls of it) and `step` (one sample of each of a batch of chains). `chunk` lowers into a single
XNNPACK delegate; nothing runs outside it.
Their weights are stored once: XNNPACK keys every constant by its SHA-256 in the program's named
data store, so the two methods share one copy (checked in tests/integration/test_export.py).

Before partitioning, common-subexpression elimination removes what unrolling a chunk repeats:
every step recomputes each population's previous spike, H(mem_{t-1} − ϑ), which the step before
already computed from the same tensors, and re-clamps every decay. That took a quarter of the
operations out of a 40-sample window (4212 → 3115 for the bundled model), which is what XNNPACK's
per-operation cost scales with, and as much out of the file.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from l2mu.agent.runtime import WINDOW_METHOD
from l2mu.export.programs import (
    STEP_BATCH_MAX,
    StepCore,
    build_methods,
    chunk_samples,
    dynamic_shapes,
    example_inputs,
    state_layout,
)
from l2mu.model.checkpoint import Checkpoint
from l2mu.model.l2mu import L2MU
from l2mu.model.metadata import ModelMetadata, write_metadata


def lower_program(core: nn.Module, net: L2MU, window_samples: int, delegate: bool = True):  # noqa: ANN201
    """The ExecuTorch program manager for `chunk` and `step` built around `core`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.passes.cse_pass import CSEPass

    inputs = example_inputs(net, window_samples)
    methods = build_methods(core)
    dynamic = dynamic_shapes(net)
    with torch.no_grad():
        programs = {name: torch.export.export(m, inputs[name], dynamic_shapes=dynamic[name], strict=False)
                    for name, m in methods.items()}
    partitioners = [XnnpackPartitioner()] if delegate else []
    # With several network steps per sample, CSE makes `step`'s reset term of a substep (H(mem − ϑ) of the
    # previous membrane) the very node that was the previous substep's spike, which XNNPACK's partitioner then
    # refuses as a pass-through ("Output node … is already in the inputs"); `step` goes without it (exact,
    # tested), `chunk` keeps it (without, a window took 1.92 ms instead of about 1).
    passes = [CSEPass()] if net.cfg.substeps == 1 else {"chunk": [CSEPass()], "step": []}
    # The window the program was made for, held by the program itself (a method with no inputs that returns
    # each sample's time in the window, in samples): metadata beside the file cannot then claim another one.
    window = {WINDOW_METHOD: torch.arange(window_samples, dtype=torch.float32)}
    edge = to_edge_transform_and_lower(programs, transform_passes=passes, partitioner=partitioners,
                                       constant_methods=window)
    return edge.to_executorch()


def export_program(ckpt: Checkpoint, out: Path, delegate: bool = True) -> ModelMetadata:
    """Write ``out`` (.pte) and its metadata JSON; returns the metadata written.

    fp32 only: an int8 program cannot pay for itself here (MODEL.md, "int8")."""
    if not isinstance(ckpt.model, L2MU):
        raise ValueError(f"{ckpt.metadata.name}: only L2MU checkpoints export to an agent program")
    net = copy.deepcopy(ckpt.model).eval()
    meta = copy.deepcopy(ckpt.metadata)
    pruning = meta.training.get("pruning")
    meta.variant = {"weights": "fp32", **({"pruning": pruning} if pruning else {})}
    program = lower_program(StepCore(net), net, meta.window_samples, delegate)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        program.write_to_file(fh)
    tmp.replace(out)
    meta.state = state_layout(net)
    meta.step_batch_max = STEP_BATCH_MAX
    meta.chunk_samples = chunk_samples(net, meta.window_samples)
    return write_metadata(out, meta)
