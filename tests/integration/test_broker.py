"""The brokers `run` starts when no --mqtt is given: both carry real MQTT traffic."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest

from l2mu.agent.broker import LocalBroker


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_local_broker_round_trip(kind: str) -> None:
    with LocalBroker(prefer=kind) as broker:
        assert broker.kind == kind
        got: queue.Queue[bytes] = queue.Queue()
        subscribed = queue.Queue()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_connect = lambda c, *_: c.subscribe("har/#", qos=1)
        sub.on_subscribe = lambda *_: subscribed.put(True)
        sub.on_message = lambda c, u, m: got.put(m.payload)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        subscribed.get(timeout=10)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("har/activity/x", b"hello", qos=1).wait_for_publish(5)
        assert got.get(timeout=10) == b"hello"
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()
