"""Helpers for the Bluetooth tests (no tests here): the private bus with the virtual BlueZ, an agent whose log
is read while it runs, a device that is no watch, and a tiny accelerometer-only model."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from l2mu.agent.sim.bluez import GattCharacteristic, GattService, Peripheral
from tests.support.cli import TINY_WINDOW, cli_command

BATTERY_SERVICE = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"


class FitnessBand(Peripheral):
    """A device with a battery service and nothing a watch protocol needs."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.name = "Fitness Band"

    def advertised_uuids(self) -> list[str]:
        return [BATTERY_SERVICE]

    def services(self) -> list[GattService]:
        return [GattService(BATTERY_SERVICE, [GattCharacteristic(BATTERY_LEVEL, ("read", "notify"), b"\x57")])]


class AgentProcess:
    """`l2mu-agent run …` on the private bus; its stderr is collected line by line while it runs."""

    def __init__(self, bus_address: str, *args: str) -> None:
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus_address, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*cli_command(), "run", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((ln for ln in self.lines if text in ln), None)
            if found:
                return found
            if self.proc.poll() is not None and self._new.empty():
                break
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=0.2)
        raise AssertionError(f"no log line with {text!r} within {timeout} s; log:\n" + "\n".join(self.lines[-30:]))

    def stop(self, timeout: float = 30) -> int:
        """SIGINT, as Ctrl-C would; the agent's closing lines are in `lines` afterwards."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode


def tiny_acc_checkpoint(folder: Path, wisdm_root: Path) -> Path:
    """conftest's tiny L2MU, for the accelerometer alone: what a watch without gyroscope can feed."""
    import torch

    from l2mu.model import wisdm
    from l2mu.model.checkpoint import save_checkpoint
    from l2mu.model.l2mu import L2MU, L2MUConfig
    from l2mu.model.metadata import ModelMetadata

    torch.manual_seed(1)
    w = wisdm.load_windows(wisdm_root, [1600], sensors=("acc",), activities=wisdm.HAND7)
    flat = w.x.reshape(-1, 3)
    net = L2MU(L2MUConfig(n_channels=3, input_population=4, input_hidden=16, memory_size=4, order=4, hidden=16))
    meta = ModelMetadata(
        name="tiny-acc-test", classes=list(wisdm.HAND7), class_names=[wisdm.ACTIVITY_NAMES[c] for c in wisdm.HAND7],
        sensors=["acc"], sample_rate_hz=20.0, window_samples=TINY_WINDOW,
        norm_mean=flat.mean(0).tolist(), norm_std=(flat.std(0) + 1e-6).tolist(),
    )
    path = folder / "tiny-acc.pt"
    save_checkpoint(path, net, meta)
    return path


def export(checkpoint: Path, out: Path) -> subprocess.Popen:
    """`l2mu-agent export` started in the background, its output in OUT.log (a pipe nobody reads could fill up)."""
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen([*cli_command(), "export", "--checkpoint", str(checkpoint), "--out", str(out)],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
