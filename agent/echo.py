"""Print what subscribers of <prefix>/activity/# receive, beside the recording's true label."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import paho.mqtt.client as mqtt
import typer

from l2mu.agent.mqtt import BrokerAddress, MqttError, MqttSecurity


class RecentTruths:
    """The recording's true label of the latest decisions, until the echo prints them.

    Bounded: a decision whose message never comes back (echo off, broker gone) must not be kept for
    the life of the process, which would grow the agent by every decision it makes.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._labels: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()  # noted on the agent's thread, taken on paho's

    def note(self, payload: dict, truth: str) -> None:
        if not truth:
            return
        with self._lock:
            self._labels[(payload["watch"], payload["seq"])] = truth
            while len(self._labels) > self.limit:
                self._labels.popitem(last=False)

    def take(self, watch: str, seq: int) -> str:
        with self._lock:
            return self._labels.pop((watch, seq), "")

    def __len__(self) -> int:
        return len(self._labels)


class EchoSubscriber:
    def __init__(self, url: str, prefix: str, truths: RecentTruths,
                 security: MqttSecurity | None = None) -> None:
        self.address = BrokerAddress.parse(url)
        self.topic = f"{prefix}/activity/#"
        self.truths = truths
        self.subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        security = security or MqttSecurity()
        if security.username:
            self._client.username_pw_set(security.username, security.password)
        if self.address.tls:
            self._client.tls_set(ca_certs=str(security.ca_file) if security.ca_file else None,
                                 certfile=str(security.cert_file) if security.cert_file else None,
                                 keyfile=str(security.key_file) if security.key_file else None)
        self._client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self._client.on_subscribe = lambda *_: self.subscribed.set()
        self._client.on_message = self._on_message

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        try:
            p = json.loads(msg.payload)
            truth = self.truths.take(p["watch"], p["seq"])
            mark = "" if not truth else ("  ✓" if truth == p["activity"] else "  ✗")
            typer.echo(
                f"{msg.topic}  seq {p['seq']:>5}  {p['activity']:<10} {p['confidence']:.2f}"
                f"   true: {truth or '?':<10}{mark}"
            )
        except (ValueError, KeyError, TypeError):
            typer.echo(f"{msg.topic}  (unreadable payload) {msg.payload[:80]!r}")

    def start(self, timeout: float = 10.0) -> None:
        try:
            self._client.connect(self.address.host, self.address.port)
        except OSError as exc:
            raise MqttError(f"cannot reach MQTT broker {self.address.host}:{self.address.port} ({exc})") from exc
        self._client.loop_start()
        if not self.subscribed.wait(timeout):
            raise MqttError(f"could not subscribe to {self.topic}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
