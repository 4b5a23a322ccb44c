"""Print what subscribers of <prefix>/activity/# receive, beside the recording's true label."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
import typer

from l2mu.agent.mqtt import BrokerAddress, MqttError, MqttSecurity


class EchoSubscriber:
    def __init__(self, url: str, prefix: str, truths: dict[tuple[str, int], str],
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
            truth = self.truths.get((p["watch"], p["seq"]), "")
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
