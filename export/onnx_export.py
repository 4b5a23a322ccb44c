"""ONNX export of the same two methods, run with ONNX Runtime — for comparison with ExecuTorch only.

The paper deployed L2MU with ONNX Runtime; the agent runs ExecuTorch. To compare like with like,
the ONNX graphs are traced from the very modules the ExecuTorch program is built from
(l2mu.export.programs), so both runtimes execute the same operations. An ONNX model holds one
graph, so the two methods become two files: `NAME.onnx` (chunk: a window is a few calls of it, as in
the agent's runner) and `NAME-step.onnx` (step).
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

from l2mu.agent.runtime import counts_by_chunks
from l2mu.export.programs import StepCore, build_methods, dynamic_shapes, example_inputs, state_layout
from l2mu.model.checkpoint import Checkpoint
from l2mu.model.l2mu import L2MU
from l2mu.model.metadata import ModelFileError, ModelMetadata


def onnx_paths(stem: Path) -> dict[str, Path]:
    stem = Path(stem)
    base = stem.with_suffix("") if stem.suffix == ".onnx" else stem
    return {"chunk": base.with_suffix(".onnx"), "step": base.with_name(base.name + "-step.onnx")}


def export_onnx(ckpt: Checkpoint, out: Path) -> dict[str, Path]:
    """Write the chunk graph to `out` (.onnx) and the step graph beside it; returns both paths."""
    if not isinstance(ckpt.model, L2MU):
        raise ValueError(f"{ckpt.metadata.name}: only L2MU checkpoints export to ONNX here")
    net = ckpt.model.eval()
    core = StepCore(net)
    inputs = example_inputs(net, ckpt.metadata.window_samples)
    methods = build_methods(core)
    parts = [p["name"].replace(".", "_") for p in state_layout(net)]
    specs = {name: (methods[name], ["samples" if name == "chunk" else "sample", *parts], [f"next_{p}" for p in parts])
             for name in ("chunk", "step")}
    dynamic = dynamic_shapes(net)
    paths = onnx_paths(out)
    paths["chunk"].parent.mkdir(parents=True, exist_ok=True)
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
    """The chunk and step graphs in ONNX Runtime's CPU execution provider."""

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
            raise ModelFileError(f"{self.paths['chunk']}: ONNX Runtime cannot load it ({exc})") from exc
        self._inputs = {name: [i.name for i in sess.get_inputs()] for name, sess in self.sessions.items()}

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths.values())

    def initial_state(self) -> list[np.ndarray]:
        """One chain's zero state: the counts, then each part, [1, n] each."""
        return [np.zeros((1, p["size"]), np.float32) for p in self.meta.state]

    def _run(self, name: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.sessions[name].run(None, dict(zip(self._inputs[name], inputs, strict=True)))

    def counts(self, window: np.ndarray) -> np.ndarray:
        return counts_by_chunks(lambda inputs: self._run("chunk", inputs), np.ascontiguousarray(window, np.float32),
                                self.meta.chunk_samples, self.initial_state())

    def step(self, sample: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(counts so far [K], new state) after one normalised sample [C] of one chain."""
        new_state = self._run("step", [np.ascontiguousarray(sample, np.float32)[None], *state])
        return new_state[0][0], new_state
