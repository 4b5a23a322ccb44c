"""MQTT publishing: decisions to <prefix>/activity/<watch>, availability to <prefix>/status/<agent>."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class MqttError(RuntimeError):
    pass


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        u = urlparse(url if "://" in url else f"mqtt://{url}")
        if u.scheme not in ("mqtt", "mqtts", "tcp"):
            raise MqttError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not u.hostname:
            raise MqttError(f"broker URL {url!r}: no host")
        tls = u.scheme == "mqtts"
        try:
            port = u.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise MqttError(f"broker URL {url!r}: bad port") from exc
        return cls(u.hostname, port, tls)


def status_topic(prefix: str, agent_id: str) -> str:
    return f"{prefix}/status/{agent_id}"


def activity_topic(prefix: str, watch_id: str) -> str:
    return f"{prefix}/activity/{watch_id}"


class MqttPublisher:
    """Keeps one session to the broker; the will announces `offline` if the agent dies."""

    def __init__(self, url: str, agent_id: str, prefix: str = "har") -> None:
        self.address = BrokerAddress.parse(url)
        self.prefix = prefix
        self.agent_id = agent_id
        self.connected = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"l2mu-agent-{agent_id}", clean_session=True
        )
        self._client.will_set(status_topic(prefix, agent_id), "offline", qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        if self.address.tls:
            self._client.tls_set()
        self._client.max_queued_messages_set(10_000)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.address.host, reason_code)
            return
        client.publish(status_topic(self.prefix, self.agent_id), "online", qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connected.clear()
        if reason_code != 0:
            log.warning("lost the broker at %s:%d (%s); retrying", self.address.host, self.address.port, reason_code)

    def connect(self, timeout: float = 10.0) -> None:
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:
            raise MqttError(f"cannot reach MQTT broker {self.address.host}:{self.address.port} ({exc})") from exc
        self._client.loop_start()
        if not self.connected.wait(timeout):
            self._client.loop_stop()
            raise MqttError(f"MQTT broker {self.address.host}:{self.address.port} did not accept the connection")

    def publish_decision(self, watch_id: str, payload: dict) -> mqtt.MQTTMessageInfo:
        # Retained: a subscriber that arrives late sees the current activity at once.
        return self._client.publish(activity_topic(self.prefix, watch_id), json.dumps(payload), qos=1, retain=True)

    def close(self) -> None:
        """Say `offline` ourselves (a clean exit sends no will), then disconnect."""
        if self.connected.is_set():
            info = self._client.publish(status_topic(self.prefix, self.agent_id), "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # the broker went away meanwhile
                info.wait_for_publish(3)
        self._client.disconnect()
        self._client.loop_stop()
