"""`run --config FILE` and the L2MU_* variables, through the command itself."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support.mqtt import Subscriber, decisions, make_recording, run_agent
from tests.support.settings import cli, write


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_precedence_through_the_command(tmp_path: Path) -> None:
    # An unknown model fails before any broker is needed, and the message says which value won.
    path = write(tmp_path, 'watches = ["demo"]\nmodel = "from-file"\n')
    assert "unknown model 'from-file'" in one_line(cli("run", "--config", str(path)))
    assert "unknown model 'from-env'" in one_line(cli("run", "--config", str(path), env={"L2MU_MODEL": "from-env"}))
    assert "unknown model 'from-cli'" in one_line(cli("run", "--config", str(path), "--model", "from-cli",
                                                      env={"L2MU_MODEL": "from-env"}))


def test_command_reports_bad_file_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'watches = ["demo"]\n[mqtt]\nurl = 1883\n')
    assert one_line(cli("run", "--config", str(path))) == f"error: {path}: mqtt.url: expected a string, got 1883"
    assert "cannot read it" in one_line(cli("run", "--config", str(tmp_path / "missing.toml")))


def test_watch_is_needed_from_somewhere(tmp_path: Path) -> None:
    path = write(tmp_path, 'topic_prefix = "x"\n')
    assert "no watch given" in one_line(cli("run", "--config", str(path), "--mqtt", "mqtt://127.0.0.1:1"))
    assert "no watch given" in one_line(cli("run", "--mqtt", "mqtt://127.0.0.1:1"))


def test_replay_run_driven_by_the_config_file_alone(mosquitto, tiny_program: Path, wisdm_root: Path,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    make_recording(wisdm_root, tmp_path / "cfgsession.csv.gz", activities="FG", seconds=4)
    path = write(tmp_path, f'watches = ["replay:cfgsession.csv.gz"]\nmodel = "{tiny_program}"\n'
                           f'agent_id = "test-config"\ntopic_prefix = "cfg"\nsmoothing = "none"\n'
                           f'[mqtt]\nurl = "{mosquitto.url}"\nprotocol = "3.1.1"\n')
    sub = Subscriber(mosquitto.port, "cfg/#")
    try:
        proc = run_agent("--config", str(path))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        time.sleep(0.5)
        msgs = sub.drain()
    finally:
        sub.close()
    published = decisions(msgs, "cfg/activity/cfgsession")
    assert len(published) >= 5 and all(d["model"] == "tiny-test" for d in published)
    status = [p for t, p, _ in msgs if t == "cfg/status/test-config"]
    assert status[0] == b"online" and status[-1] == b"offline"
