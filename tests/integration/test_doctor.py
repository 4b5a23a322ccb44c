"""`l2mu-agent doctor`: one line per check, exit 1 when any fails, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from l2mu.agent.runtime import DEFAULT_MODEL
from tests.support.cli import cli_command


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), "doctor", *args], capture_output=True, text=True, timeout=300)


def lines_by_check(proc: subprocess.CompletedProcess) -> dict[str, str]:
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith(("ok   ", "FAIL ")) for line in lines), proc.stdout
    assert proc.stderr == "" or "Traceback" not in proc.stderr
    return {line[5:].split(":", 1)[0]: line for line in lines}


def test_reachable_broker_and_loadable_model_pass(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    config = tmp_path / "config.toml"
    config.write_text(f'watches = ["demo"]\n[mqtt]\nurl = "{mosquitto.url}"\n', encoding="utf-8")
    proc = doctor("--config", str(config))
    checks = lines_by_check(proc)
    assert checks["broker"].startswith("ok   broker: 127.0.0.1:") and "accepted" in checks["broker"]
    assert checks["model"].startswith(f"ok   model: {DEFAULT_MODEL} loads")
    # No adapter or BlueZ in this sandbox, so those may fail; the exit status must say whether anything did.
    assert proc.returncode == (0 if all(v.startswith("ok") for v in checks.values()) else 1)


def test_unreachable_broker_and_unknown_model_fail() -> None:
    proc = doctor("--watch", "demo", "--mqtt", "mqtt://127.0.0.1:1", "--model", "no-such-model")
    checks = lines_by_check(proc)
    assert proc.returncode == 1
    assert checks["broker"] == "FAIL broker: cannot reach 127.0.0.1:1 (Connection refused)"
    assert checks["model"].startswith("FAIL model: unknown model 'no-such-model'")
    assert set(checks) == {"system D-Bus", "BlueZ", "broker", "model"}
