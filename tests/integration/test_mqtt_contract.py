"""What subscribers rely on beyond the decision itself: smoothing fields, raw scores, Home Assistant
discovery, and consumers scaled out with MQTT 5 shared subscriptions."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import jsonschema
import pytest

from l2mu.agent.hass import unique_id
from l2mu.agent.mqtt import MqttPublisher
from tests.support.cli import REPO
from tests.support.mqtt import SCHEMA, Subscriber, make_recording, run_agent

STATE_SCHEMA = json.loads((REPO / "docs" / "watch-state.schema.json").read_text())


@pytest.fixture(scope="module")
def recording(wisdm_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(wisdm_root, tmp_path_factory.mktemp("contract") / "contract.csv.gz", "FGR", seconds=12)


@pytest.mark.parametrize("smoothing", ["none", "majority", "hmm"])
def test_every_decision_is_published_with_raw_and_smoothed_activity(mosquitto, tiny_program: Path,  # noqa: ANN001
                                                                    recording: Path, smoothing: str) -> None:
    sub = Subscriber(mosquitto.port, "har/activity/contract")
    try:
        proc = run_agent("--watch", f"replay:{recording}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                         "--speed", "0", "--agent-id", f"smooth-{smoothing}", "--smoothing", smoothing,
                         "--smoothing-window", "3")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        # Live messages only: the retained one is an earlier test's last decision.
        got = [json.loads(p) for t, p, retained in sub.drain(1.0) if t == "har/activity/contract" and not retained]
    finally:
        sub.close()
    assert [d["seq"] for d in got] == list(range(len(got))) and len(got) >= 30  # one per period, unbroken
    for d in got:
        jsonschema.validate(d, SCHEMA)
        assert d["raw_activity"] == max(d["scores"], key=d["scores"].get)
        assert d["confidence"] == d["scores"][d["activity"]]
    changes = {k: sum(a[k] != b[k] for a, b in zip(got, got[1:], strict=False)) for k in ("activity", "raw_activity")}
    if smoothing == "none":
        assert all(d["activity"] == d["raw_activity"] for d in got)
    else:
        assert changes["activity"] <= changes["raw_activity"]


def test_raw_scores_and_home_assistant_discovery(mosquitto, tiny_program: Path, recording: Path) -> None:  # noqa: ANN001
    sub = Subscriber(mosquitto.port, "#")
    uid = unique_id("ha-agent", "contract")
    config_topic = f"homeassistant/sensor/{uid}/config"
    proc = run_agent("--watch", f"replay:{recording}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                     "--speed", "2", "--agent-id", "ha-agent", "--ha-discovery", "--raw-scores")
    try:
        _, payload, retained = sub.take(topic=config_topic, live=True)
        config = json.loads(payload)
        assert config["unique_id"] == uid
        assert config["state_topic"] == config["json_attributes_topic"] == "har/activity/contract"
        assert config["availability_topic"] == "har/status/ha-agent"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["value_template"] == "{{ value_json.activity }}"
        assert config["options"] == ["typing", "teeth", "catch", "dribbling", "writing", "clapping", "folding"]
        assert config["device"]["model"] == "tiny-test" and config["device"]["identifiers"]
        # The watch's battery and connectivity entities, on the same device, read its state topic. (States may
        # come before or between the configs: collect until each has been seen.)
        battery_topic = "homeassistant/sensor/l2mu_ha-agent_contract_battery/config"
        connected_topic = "homeassistant/binary_sensor/l2mu_ha-agent_contract_connected/config"
        wanted = {battery_topic, connected_topic, "har/watch/contract/state", "har/scores/contract"}
        seen: dict[str, list[tuple[bytes, bool]]] = {}
        while not wanted <= set(seen):
            topic, message, retained = sub.take()
            if topic == "har/scores/contract" or not retained:  # retained configs and states: earlier runs'
                seen.setdefault(topic, []).append((message, retained))
        for topic, device_class in ((battery_topic, "battery"), (connected_topic, "connectivity")):
            extra = json.loads(seen[topic][0][0])
            assert extra["state_topic"] == "har/watch/contract/state" and extra["device_class"] == device_class
            assert extra["availability_topic"] == "har/status/ha-agent"
            assert extra["device"]["identifiers"] == config["device"]["identifiers"]
        states = [json.loads(m) for m, _ in seen["har/watch/contract/state"]]
        for state in states:
            jsonschema.validate(state, STATE_SCHEMA)
        assert states[0]["watch"] == "contract" and states[0]["state"] in ("connecting", "streaming"), states
        scores, retained = seen["har/scores/contract"][0]
        scores = json.loads(scores)
        assert not retained and set(scores) >= {"seq", "scores", "counts", "raw_activity", "window_end"}
        # Home Assistant restarted: it says so, and the agent announces the sensor again.
        sub.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        _, again, _ = sub.take(topic=config_topic)
        assert json.loads(again) == config
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sub.close()
    late = Subscriber(mosquitto.port, config_topic)  # retained, for a Home Assistant that starts later
    try:
        assert late.take(topic=config_topic, timeout=5)[2]
    finally:
        late.close()


def test_shared_subscription_splits_the_stream_between_consumers(mosquitto) -> None:  # noqa: ANN001
    group = [Subscriber(mosquitto.port, "$share/workers/har/activity/#", v5=True) for _ in range(2)]
    pub = MqttPublisher(mosquitto.url, "shared-test")
    pub.connect()
    try:
        for seq in range(60):
            pub.publish_decision(f"shared{seq % 3}", {"seq": seq})
        assert pub.flush(10)
        got = [{json.loads(p)["seq"] for t, p, _ in s.drain(1.0) if t.startswith("har/activity/shared")}
               for s in group]
    finally:
        pub.close()
        for s in group:
            s.close()
    assert got[0] and got[1], "each member of the share group gets a part"
    assert not got[0] & got[1], "no message goes to both"
    assert got[0] | got[1] == set(range(60))


def test_mqtt311_publisher_reaches_an_mqtt5_subscriber(mosquitto) -> None:  # noqa: ANN001
    sub = Subscriber(mosquitto.port, "har/activity/v5check", v5=True)
    pub = MqttPublisher(mosquitto.url, "v311-test", protocol="3.1.1")
    pub.connect()
    try:
        pub.publish_decision("v5check", {"seq": 0})
        assert pub.flush(10)
        assert json.loads(sub.take(topic="har/activity/v5check")[1]) == {"seq": 0}
    finally:
        pub.close()
        sub.close()
