"""Each watch's state message: what changes send one, what it says, and its Home Assistant entities."""

from __future__ import annotations

import json

import jsonschema
import pytest

from l2mu.agent.events import Sample, StreamGap, WatchConnected
from l2mu.agent.hass import watch_state_discovery
from l2mu.agent.watch_state import WatchStateBoard, WatchStatus
from tests.support.cli import REPO

SCHEMA = json.loads((REPO / "docs" / "watch-state.schema.json").read_text())


class Replay:
    watch_id = "rec"


class Live:
    def __init__(self) -> None:
        self.watch_id = "C0_FF"
        self.status = WatchStatus(self.watch_id)
        self.status.readings = lambda: {"rssi": -61, "dropped_frames": 3}


def board() -> tuple[WatchStateBoard, list[tuple[str, dict]]]:
    sent: list[tuple[str, dict]] = []
    return WatchStateBoard(lambda w, p: sent.append((w, p)), interval_s=60), sent


def test_a_live_watch_publishes_every_change_of_its_own_state() -> None:
    b, sent = board()
    live = Live()
    b.track(live)
    live.status.set("connecting")
    live.status.set("connecting")  # no change, no message
    live.status.set("streaming")
    live.status.set_battery(87)
    live.status.set_battery(87)
    live.status.set("reconnecting", "stalled")
    live.status.set("reconnecting", "stalled: le-connection-abort-by-local")  # a new reason is news
    assert [(p["state"], p["reason"], p["battery"]) for _, p in sent] == [
        ("connecting", None, None), ("streaming", None, None), ("streaming", None, 87),
        ("reconnecting", "stalled", 87), ("reconnecting", "stalled: le-connection-abort-by-local", 87)]
    for _, p in sent:
        jsonschema.validate(p, SCHEMA)
        assert p["rssi"] == -61 and p["dropped_frames"] == 3 and p["watch"] == "C0_FF"
    # `since` moves with the state, not with the reason
    assert sent[-1][1]["since"] == sent[-2][1]["since"] >= sent[1][1]["since"]


def test_a_recording_streams_from_its_first_sample_and_stops_when_it_ends() -> None:
    b, sent = board()
    b.track(Replay())
    b.saw("rec", Sample(0.0, "acc", (0.0, 0.0, 9.8)))
    b.saw("rec", Sample(0.05, "acc", (0.0, 0.0, 9.8)))
    b.ended("rec", None)
    assert [p["state"] for _, p in sent] == ["streaming", "stopped"]
    assert sent[-1][1]["reason"] == "ended" and sent[-1][1]["battery"] is None and sent[-1][1]["rssi"] is None
    for _, p in sent:
        jsonschema.validate(p, SCHEMA)


def test_a_source_without_its_own_status_follows_its_events() -> None:
    b, sent = board()
    b.track(Replay())
    b.saw("rec", WatchConnected(("acc",), "l2mu"))
    b.saw("rec", StreamGap("acc", "link lost"))
    b.saw("rec", StreamGap("acc", "samples shed"))  # shedding is no change of connection
    b.ended("rec", RuntimeError("C0: gave up\n after 3 s"))
    assert [(p["state"], p["reason"]) for _, p in sent] == [
        ("streaming", None), ("reconnecting", "link lost"), ("stopped", "C0: gave up after 3 s")]


def test_rate_and_the_periodic_message() -> None:
    b, sent = board()
    b.track(Replay())
    t0 = b._history["rec"][0][0]
    for i in range(100):
        b.saw("rec", Sample(i / 50, "acc", (0.0, 0.0, 9.8)))
    assert b.rate_hz("rec", now=t0 + 2.0) == pytest.approx(50.0)
    n = len(sent)
    b.tick(now=t0 + 30)  # quiet for less than the interval: nothing
    assert len(sent) == n
    b.tick(now=t0 + 61)
    assert len(sent) == n + 1 and sent[-1][1]["state"] == "streaming"
    # the rate window moves on: after 6 s without samples it reads 0
    b.tick(now=t0 + 62)
    b.tick(now=t0 + 68)
    assert b.rate_hz("rec", now=t0 + 68) == 0.0


def test_a_failing_publish_never_reaches_the_watch() -> None:
    def refuse(_w: str, _p: dict) -> None:
        raise OSError("broker gone")

    b = WatchStateBoard(refuse, interval_s=1)
    live = Live()
    b.track(live)
    live.status.set("streaming")  # logged, not raised
    assert live.status.state == "streaming"


def test_battery_is_clamped_and_states_are_checked() -> None:
    status = WatchStatus("w")
    status.set_battery(130)
    assert status.battery == 100
    with pytest.raises(ValueError):
        status.set("dancing")


def test_home_assistant_battery_and_connectivity_entities() -> None:
    messages = dict(watch_state_discovery("homeassistant", "har/watch/w1/state", "har/status/pi", "pi", "w1",
                                          "tiny-test"))
    battery = json.loads(messages["homeassistant/sensor/l2mu_pi_w1_battery/config"])
    connected = json.loads(messages["homeassistant/binary_sensor/l2mu_pi_w1_connected/config"])
    assert battery["device_class"] == "battery" and battery["unit_of_measurement"] == "%"
    assert connected["device_class"] == "connectivity"
    assert (connected["payload_on"], connected["payload_off"]) == ("ON", "OFF")
    for config in (battery, connected):
        assert config["state_topic"] == "har/watch/w1/state"
        assert config["availability_topic"] == "har/status/pi"  # the agent's will takes every watch offline
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["device"]["identifiers"] == ["l2mu_pi_w1"]  # the same device as the activity sensor
    assert battery["unique_id"] != connected["unique_id"]
