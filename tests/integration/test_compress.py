"""Compression and the comparison runtime: magnitude pruning with a masked fine-tune, ONNX."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from l2mu.export.compress import sparsity_of
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.metadata import ModelFileError
from tests.support.cli import cli_command
from tests.support.export import real_windows


def test_compress_command_writes_a_pruned_checkpoint_with_its_report(tiny_checkpoint: Path, wisdm_root: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "pruned.pt"
    proc = subprocess.run([*cli_command(), "compress", "--checkpoint", str(tiny_checkpoint), "--data", str(wisdm_root),
                           "--out", str(out), "--sparsity", "0.7", "--finetune-epochs", "1",
                           "--max-steps-per-epoch", "2", "--subjects", "1600,1601,1603", "--val-subjects", "1603"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pruned = load_checkpoint(out)
    assert sparsity_of(pruned.model)["overall"] == pytest.approx(0.7, abs=0.01)
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["train_subjects"] == [1600, 1601] and report["validation_subjects"] == [1603]
    assert [h["epoch"] for h in report["history"]] == [0, 1] and report["history"][1]["train_loss"] > 0
    assert pruned.metadata.name.endswith("-p70") and pruned.metadata.training["pruning"]["sparsity"] == 0.7
    assert "wrote" in proc.stdout and "70.0%" in proc.stdout


# ---- ONNX (comparison only) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from l2mu.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(load_checkpoint(tiny_checkpoint), out)
    return out


def test_onnx_runtime_matches_the_eager_network_on_real_windows(tiny_onnx: Path, tiny_program: Path,
                                                                tiny_checkpoint: Path, wisdm_root: Path) -> None:
    from l2mu.export.onnx_export import OnnxRuntimeModel, onnx_paths
    from l2mu.model.metadata import read_metadata

    meta = read_metadata(tiny_program)  # the same state layout as the ExecuTorch program's
    ort = OnnxRuntimeModel(tiny_onnx, meta)
    assert all(p.is_file() for p in onnx_paths(tiny_onnx).values())
    x = real_windows(wisdm_root, meta)
    with torch.no_grad():
        eager = load_checkpoint(tiny_checkpoint).model(torch.from_numpy(x)).numpy()
    window = np.stack([ort.counts(w) for w in x])
    assert (window.argmax(1) == eager.argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(window, eager, atol=1e-5)
    for w, expected in zip(x[:20], window[:20], strict=True):
        state = ort.initial_state()
        for sample in w:
            counts, state = ort.step(sample, state)
        np.testing.assert_array_equal(counts, expected)


def test_onnx_file_that_is_not_onnx_is_refused(tiny_onnx: Path, tiny_program: Path, tmp_path: Path) -> None:
    from l2mu.export.onnx_export import OnnxRuntimeModel, onnx_paths
    from l2mu.model.metadata import read_metadata

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    shutil.copy(onnx_paths(tiny_onnx)["step"], onnx_paths(bad)["step"])
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load it"):
        OnnxRuntimeModel(bad, read_metadata(tiny_program))
