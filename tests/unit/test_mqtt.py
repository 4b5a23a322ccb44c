"""Broker URLs and MQTT credentials, as the publisher reads them."""

from __future__ import annotations

import socket
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
