"""Broker URLs and MQTT credentials, as the publisher reads them."""

from __future__ import annotations

import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from l2mu.agent.mqtt import BrokerAddress, MqttError


@pytest.mark.parametrize("url,expected", [
    ("mqtt://broker.local", BrokerAddress("broker.local", 1883, False)),
    ("mqtts://broker.local", BrokerAddress("broker.local", 8883, True)),
    ("10.1.2.3:1884", BrokerAddress("10.1.2.3", 1884, False)),
])
def test_broker_urls(url: str, expected: BrokerAddress) -> None:
    assert BrokerAddress.parse(url) == expected


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://h:notaport"])
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(MqttError):
        BrokerAddress.parse(url)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_each_puback_is_acknowledged_at_once_not_after_the_delayed_ack_timer() -> None:
    from l2mu.agent.mqtt import acknowledge_now

    with socket.create_server(("127.0.0.1", 0)) as server:
        client_sock = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client_sock, peer:
            client_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # as after a few round trips
            assert client_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0
            acknowledge_now(SimpleNamespace(socket=lambda: client_sock))  # type: ignore[arg-type]
            assert client_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
            acknowledge_now(SimpleNamespace(socket=lambda: None))  # type: ignore[arg-type]  # not connected: no-op


class RecordingClient:
    """Stands in for paho: records what the sender hands over (mid, seq), never sends."""

    def __init__(self) -> None:
        self.published: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False) -> SimpleNamespace:
        with self.lock:
            mid = len(self.published) + 1
            self.published.append((mid, json.loads(payload)["seq"]))
        return SimpleNamespace(mid=mid)

    def seqs(self) -> list[int]:
        with self.lock:
            return [seq for _, seq in self.published]


def wait_until(check, what: str, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_nothing_new_overtakes_what_paho_resends_after_a_reconnect() -> None:
    """paho sets its session up (and `connected`) before it resends the unacknowledged decisions: the sender
    must hand over nothing new until those are acknowledged, or the retained topic could end on an older one."""
    from l2mu.agent.mqtt import MqttPublisher

    pub = MqttPublisher("mqtt://127.0.0.1:1", "order-test")
    fake = RecordingClient()
    pub._client = fake  # type: ignore[assignment]
    ok = SimpleNamespace(is_failure=False)
    try:
        pub.connected.set()
        pub._events.put(("wake", None))
        for seq in range(3):
            pub.publish_decision("w", {"seq": seq})
        wait_until(lambda: fake.seqs() == [0, 1, 2], "the first three handed over")
        pub.connected.clear()  # the link drops with all three unacknowledged
        pub._events.put(("down",))
        pub.publish_decision("w", {"seq": 3})
        pub.connected.set()  # paho's on_connect: the session is up, its resends still to come
        pub.publish_decision("w", {"seq": 4})
        time.sleep(0.2)
        assert fake.seqs() == [0, 1, 2], "a new decision went out before paho's resends"
        pub._events.put(("wake", time.monotonic()))
        pub.publish_decision("w", {"seq": 5})
        time.sleep(0.2)
        assert fake.seqs() == [0, 1, 2], "handed over while the resent ones wait for their acknowledgement"
        for mid in (1, 2, 3):
            pub._events.put(("ack", mid, ok, time.monotonic()))
        wait_until(lambda: fake.seqs() == [0, 1, 2, 3, 4, 5], "the rest, in order, once the resends are acknowledged")
    finally:
        pub._events.put(("stop",))
        pub._sender.join(5)
