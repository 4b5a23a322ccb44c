"""MQTT credentials from options and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2mu.agent.mqtt import MqttError, MqttSecurity


def test_credentials_from_options_and_environment(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored\n")
    sec = MqttSecurity.from_options("alice", pw, environ={"L2MU_MQTT_PASSWORD": "from-env"})
    assert (sec.username, sec.password) == ("alice", "s3cret") and "s3cret" not in repr(sec)
    sec = MqttSecurity.from_options(None, None, environ={"L2MU_MQTT_USERNAME": "bob", "L2MU_MQTT_PASSWORD": "x"})
    assert (sec.username, sec.password) == ("bob", "x")
    with pytest.raises(MqttError, match="no username"):
        MqttSecurity.from_options(None, pw, environ={})
    with pytest.raises(MqttError, match="--ca-file"):
        MqttSecurity.from_options(None, None, ca_file=tmp_path / "missing.crt", environ={})
