"""Broker URLs and MQTT credentials, as the publisher reads them."""

from __future__ import annotations

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
