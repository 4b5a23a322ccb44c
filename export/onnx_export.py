"""ONNX export of the same two methods, run with ONNX Runtime — for comparison with ExecuTorch only.

The paper deployed L2MU with ONNX Runtime; the agent runs ExecuTorch. To compare like with like,
the ONNX graphs are traced from the very modules the ExecuTorch program is built from
(l2mu.export.programs), so both runtimes execute the same operations. An ONNX model holds one
graph, so the two methods become two files: `NAME.onnx` (window) and `NAME-step.onnx` (step).
ONNX Runtime gets its best CPU settings: every graph optimisation on, and the thread count the
caller asks for (the benchmarks use one thread for every runtime).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from onnx_ir.passes.common import ClearMetadataAndDocStringPass

from l2mu.export.programs import StepCore, build_methods, dynamic_shapes, example_inputs, state_layout
from l2mu.model.checkpoint import Checkpoint
from l2mu.model.l2mu import L2MU
from l2mu.model.metadata import ModelFileError, ModelMetadata


def onnx_paths(stem: Path) -> dict[str, Path]:
    stem = Path(stem)
    base = stem.with_suffix("") if stem.suffix == ".onnx" else stem
    return {"forward": base.with_suffix(".onnx"), "step": base.with_name(base.name + "-step.onnx")}


def export_onnx(ckpt: Checkpoint, out: Path) -> dict[str, Path]:
    """Write the window graph to `out` (.onnx) and the step graph beside it; returns both paths."""
    if not isinstance(ckpt.model, L2MU):
        raise ValueError(f"{ckpt.metadata.name}: only L2MU checkpoints export to ONNX here")
    net = ckpt.model.eval()
    core = StepCore(net)
    inputs = example_inputs(net, ckpt.metadata.window_samples)
    methods = build_methods(core, net)
    parts = [p["name"].replace(".", "_") for p in state_layout(net)]
    specs = {"forward": (methods["forward"], ["window"], ["counts"]),
             "step": (methods["step"], ["sample", *parts], [f"next_{p}" for p in parts])}
    dynamic = dynamic_shapes(net)
    paths = onnx_paths(out)
    paths["forward"].parent.mkdir(parents=True, exist_ok=True)
    for name, (module, in_names, out_names) in specs.items():
        # The exporter narrates every phase on stdout; a command's output is its own.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(module, inputs[name], input_names=in_names, output_names=out_names,
                                        dynamic_shapes=dynamic[name], dynamo=True, optimize=True)
        # Each node carries its Python stack trace as metadata: 85 % of the file, nothing a runtime reads.
        ClearMetadataAndDocStringPass()(program.model)
        program.save(str(paths[name]), external_data=False)
    return paths


class OnnxRuntimeModel:
    """The window and step graphs in ONNX Runtime's CPU execution provider."""

    def __init__(self, stem: Path, meta: ModelMetadata, threads: int = 1) -> None:
        import onnxruntime as ort

        self.paths = onnx_paths(stem)
        self.meta = meta
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                             for name, p in self.paths.items()}
        except Exception as exc:  # onnxruntime raises its own exception types for missing or bad files
            raise ModelFileError(f"{self.paths['forward']}: ONNX Runtime cannot load it ({exc})") from exc
        self._window_input = self.sessions["forward"].get_inputs()[0].name
        self._step_inputs = [i.name for i in self.sessions["step"].get_inputs()]

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths.values())

    def initial_state(self) -> list[np.ndarray]:
        """One chain's zero state: the counts, then each part, [1, n] each."""
        return [np.zeros((1, p["size"]), np.float32) for p in self.meta.state]

    def counts(self, window: np.ndarray) -> np.ndarray:
        return self.sessions["forward"].run(None, {self._window_input: np.ascontiguousarray(window, np.float32)})[0]

    def step(self, sample: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(counts so far [K], new state) after one normalised sample [C] of one chain."""
        feed = dict(zip(self._step_inputs, [np.ascontiguousarray(sample, np.float32)[None], *state], strict=True))
        new_state = self.sessions["step"].run(None, feed)
        return new_state[0][0], new_state
