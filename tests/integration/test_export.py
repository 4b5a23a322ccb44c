"""ExecuTorch export: program + metadata, parity of both methods with the eager network, bad files refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from l2mu.agent.runtime import ExecuTorchClassifier
from l2mu.model import wisdm
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.metadata import ModelFileError, read_metadata
from tests.support.cli import TINY_WINDOW, cli_command
from tests.support.export import real_windows, step_counts


def test_metadata_beside_program_describes_the_model(tiny_program: Path) -> None:
    meta = json.loads(tiny_program.with_suffix(".json").read_text())
    assert meta["classes"] == list(wisdm.HAND7)
    assert meta["channels"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert meta["units"] == {"acc": "m/s^2", "gyro": "rad/s"}
    assert meta["sample_rate_hz"] == 20.0 and meta["window_samples"] == TINY_WINDOW
    assert len(meta["norm_mean"]) == len(meta["norm_std"]) == 6
    assert meta["sensors"] == ["acc", "gyro"]
    # step's state parts: the counts so far, then every population's membrane, then the fed-back spikes.
    names = [s["name"] for s in meta["state"]]
    assert names[0] == "counts" and meta["state"][0]["shape"] == [7]
    assert names[-2:] == ["spk_h", "spk_m"] and "m.mem" in names
    ends = [0] + [s["offset"] + s["size"] for s in meta["state"]]
    assert [s["offset"] for s in meta["state"]] == ends[:-1]  # contiguous, in this order
    assert meta["variant"]["weights"] == "fp32"
    assert meta["step_batch_max"] == 256  # step takes a batch of chains: 1 … 256
    assert meta["chunk_samples"] == TINY_WINDOW  # a one-step window fits one chunk call


def test_both_methods_match_the_eager_network_on_real_windows(tiny_program: Path, tiny_checkpoint: Path,
                                                               wisdm_root: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    clf = ExecuTorchClassifier(tiny_program)
    x = real_windows(wisdm_root, clf.meta)
    with torch.no_grad():
        eager = ckpt.model(torch.from_numpy(x)).numpy()  # the snnTorch modules, not the export graph
    chunks = np.stack([clf.counts(w) for w in x])
    step = np.stack([step_counts(clf, w) for w in x])
    assert eager.sum() > 0 and len(set(eager.argmax(1))) > 1  # spikes flow, and not to one class only
    for pte in (chunks, step):
        assert (pte.argmax(1) == eager.argmax(1)).mean() >= 0.995
        np.testing.assert_allclose(pte, eager, atol=1e-5)


def test_step_applied_t_times_equals_the_chunks_exactly(tiny_program: Path, wisdm_root: Path) -> None:
    clf = ExecuTorchClassifier(tiny_program)
    for window in real_windows(wisdm_root, clf.meta, n=30):
        np.testing.assert_array_equal(step_counts(clf, window), clf.counts(window))


def test_program_is_one_delegate_per_method_with_the_weights_stored_once(tiny_program: Path,
                                                                          tiny_checkpoint: Path) -> None:
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(tiny_program.read_bytes())
    plans = {p.name: p for p in pte.program.execution_plan}
    assert set(plans) == {"chunk", "step", "window"}  # window: a constant, the window the program was made for
    assert plans["window"].delegates == [] and plans["window"].operators == []
    # chunk: one delegate call and nothing else runs, no operator outside XNNPACK.
    assert len(plans["chunk"].delegates) == 1 and plans["chunk"].delegates[0].id == "XnnpackBackend"
    assert [op.name for op in plans["chunk"].operators] == []
    # step (dynamic batch): XNNPACK cannot reshape the memory population to [B, d, q] with B symbolic, so that
    # view runs between delegates as a primitive op of the runtime itself — no kernel library is needed.
    assert {d.id for d in plans["step"].delegates} == {"XnnpackBackend"}
    assert {op.name for op in plans["step"].operators} <= {"aten::sym_size", "executorch_prim::et_view"}
    weights = sum(t.numel() * t.element_size() for t in load_checkpoint(tiny_checkpoint).model.state_dict().values())
    stored = sum(len(b) for b in pte.named_data.buffers)
    # Both methods use the same constants, keyed by content: one copy, not two.
    assert weights * 0.9 < stored < weights * 1.5


def test_truncated_program_is_refused_with_a_clear_error(tiny_program: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pte"
    bad.write_bytes(tiny_program.read_bytes()[:1000])
    shutil.copy(tiny_program.with_suffix(".json"), bad.with_suffix(".json"))
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        ExecuTorchClassifier(bad)


def test_missing_metadata_is_refused(tiny_program: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.pte"
    shutil.copy(tiny_program, lone)
    with pytest.raises(ModelFileError, match="metadata file lone.json missing"):
        ExecuTorchClassifier(lone)


def test_export_options_are_checked_before_work(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cases = [
        (["--out", str(tmp_path / "x.bin")], "must end in .pte"),
        (["--onnx", str(tmp_path / "x.txt")], "must end in .onnx"),
    ]
    for extra, message in cases:
        proc = subprocess.run([*cli_command(), "export", "--checkpoint", str(tiny_checkpoint),
                               "--out", str(tmp_path / "x.pte"), *extra], capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
            proc.stderr
        assert not (tmp_path / "x.pte").exists()


@pytest.mark.parametrize(("substeps", "input_taps", "chunk"), [(5, 1, TINY_WINDOW // 2), (1, 2, TINY_WINDOW)])
def test_networks_of_several_steps_per_sample_or_a_delayed_input_synapse_export_exactly(
        tiny_checkpoint: Path, tmp_path: Path, substeps: int, input_taps: int, chunk: int) -> None:
    """`substeps` > 1 (each sample held for several network steps; the window in two chunk calls) and
    `input_taps` = 2 (a delayed input synapse, whose current is carried as state) through the real export
    command and the agent's own runner, which has no kernel outside XNNPACK: both methods give the eager
    network's counts."""
    from dataclasses import replace

    from l2mu.model.checkpoint import save_checkpoint
    from l2mu.model.l2mu import L2MU

    ckpt = load_checkpoint(tiny_checkpoint)
    net = L2MU(replace(ckpt.model.cfg, substeps=substeps, theta=ckpt.model.cfg.theta * substeps,
                       input_taps=input_taps))
    net.load_state_dict(ckpt.model.state_dict(), strict=input_taps == 1)
    net.eval()
    save_checkpoint(tmp_path / "net.pt", net, ckpt.metadata)
    proc = subprocess.run([*cli_command(), "export", "--checkpoint", str(tmp_path / "net.pt"),
                           "--out", str(tmp_path / "net.pte")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    clf = ExecuTorchClassifier(tmp_path / "net.pte")
    assert clf.chunk == chunk  # with 5 steps per sample, 5 samples: within the 40 steps a chunk unrolls
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.standard_normal((TINY_WINDOW, 6)) * 1.5).astype(np.float32)
        with torch.no_grad():
            eager = net(torch.from_numpy(x)[None])[0].numpy()
        state = clf.initial_state()
        for t in range(TINY_WINDOW):
            stepped, state = clf.step(x[t], state)
        np.testing.assert_array_equal(clf.counts(x), eager)
        np.testing.assert_array_equal(stepped, eager)
    assert eager.sum() > 0, "the network should spike for this input"


def test_metadata_state_matches_what_step_takes(tiny_program: Path) -> None:
    meta = read_metadata(tiny_program)
    clf = ExecuTorchClassifier(tiny_program)
    counts, state = clf.step(np.zeros(len(meta.channels), np.float32), clf.initial_state())
    assert counts.shape == (len(meta.classes),)
    assert [part.shape for part in state] == [(1, part["size"]) for part in meta.state]
