from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import REPO, TINY_WINDOW, cli_command


@pytest.fixture(scope="session")
def wisdm_root() -> Path:
    """The real WISDM-2019 watch data: $L2MU_WISDM_DIR, else the workspace's shared copy."""
    root = Path(os.environ.get("L2MU_WISDM_DIR", REPO.parent / "shared" / "data" / "wisdm-dataset"))
    if not (root / "raw" / "watch").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"WISDM data not found at {root}; CI must provide it")
        pytest.skip(f"WISDM data not found at {root} (set L2MU_WISDM_DIR)")
    return root


@pytest.fixture(scope="session")
def mosquitto():
    """A real mosquitto on a free port with a generated config, for the whole session."""
    from l2mu.agent.broker import LocalBroker, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    with LocalBroker(prefer="mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, wisdm_root: Path) -> Path:
    """A small seeded L2MU, normalised on real data, with a 10-sample window."""
    import numpy as np
    import torch

    from l2mu.model import wisdm
    from l2mu.model.checkpoint import save_checkpoint
    from l2mu.model.l2mu import L2MU, L2MUConfig
    from l2mu.model.metadata import ModelMetadata

    torch.manual_seed(0)
    w = wisdm.load_windows(wisdm_root, [1600], activities=wisdm.HAND7)
    flat = w.x.reshape(-1, 6)
    net = L2MU(L2MUConfig(input_population=4, input_hidden=16, memory_size=4, order=4, hidden=16))
    meta = ModelMetadata(
        name="tiny-test", classes=list(wisdm.HAND7), class_names=[wisdm.ACTIVITY_NAMES[c] for c in wisdm.HAND7],
        sensors=["acc", "gyro"], sample_rate_hz=20.0, window_samples=TINY_WINDOW,
        norm_mean=flat.mean(0).tolist(), norm_std=(flat.std(0) + 1e-6).tolist(),
    )
    path = tmp_path_factory.mktemp("tiny") / "checkpoint.pt"
    save_checkpoint(path, net, meta)
    assert np.isfinite(meta.norm_std).all()
    return path


@pytest.fixture(scope="session")
def tiny_program(tiny_checkpoint: Path) -> Path:
    """tiny_checkpoint exported through the real `l2mu-agent export` command."""
    import subprocess

    out = tiny_checkpoint.parent / "tiny.pte"
    proc = subprocess.run([*cli_command(), "export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket like systemd's, in a short directory (AF_UNIX paths are limited to 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="l2mu-notify-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
