"""MQTT publishing: decisions to <prefix>/activity/<watch>, availability to <prefix>/status/<agent>.

Decisions go through an `Outbox` and are handed to paho by one sender thread, up to IN_FLIGHT not
yet acknowledged at a time. paho resends its own unacknowledged messages after a reconnect; the
sender hands over nothing new until those are acknowledged, which keeps every watch's decisions in
order across outages; messages queued while the broker is away wait in the outbox.
A broker that cannot be reached at start is no different: the agent runs, decisions queue, and a
connector thread keeps trying (1 s doubling to 30 s) until it answers. Only what the user must fix
(a bad URL, unreadable credentials or TLS files, a TLS handshake that fails) stops the start.
See docs/mqtt.md for the topics and their semantics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from l2mu.agent.errors import MqttError
from l2mu.agent.outbox import Outbox
from l2mu.agent.settings import DEFAULTS

log = logging.getLogger(__name__)

# Decisions handed to paho and not yet acknowledged, at most (paho itself puts 20 on the wire at a time and
# keeps the rest in order); more would sit in paho's memory, out of the outbox's reach. A sliding window: a
# decision goes to paho at once while fewer are out, instead of waiting for the whole previous batch's
# acknowledgements (which doubled the sample → PUBACK tail at 64 watches).
IN_FLIGHT = 100
HA_STATUS = "status"
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def acknowledge_now(client: mqtt.Client) -> None:
    """Send the TCP ACK for what the broker just sent at once, not after Linux's delayed-ACK timer (up to 40 ms).
    Brokers keep Nagle's algorithm on (mosquitto's `set_tcp_nodelay` is false by default), so of several PUBACKs
    due together the second waits for our ACK of the first: that put 40 ms on the p90 of sample → PUBACK at 64
    watches. The option is not sticky; setting it flushes the pending ACK, so it is set after each PUBACK (paho
    also calls on_publish after writing a QoS 0 message: one more cheap syscall then)."""
    sock = client.socket()
    if TCP_QUICKACK is not None and isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)


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


@dataclass(frozen=True)
class MqttSecurity:
    """Credentials and TLS files. The password never appears in repr() or in any log line."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_options(cls, username: str | None, password_file: Path | None, ca_file: Path | None = None,
                     cert_file: Path | None = None, key_file: Path | None = None,
                     environ: Mapping[str, str] = os.environ) -> MqttSecurity:
        """--username / --password-file, else $L2MU_MQTT_USERNAME / $L2MU_MQTT_PASSWORD."""
        username = username or environ.get("L2MU_MQTT_USERNAME") or None
        password = environ.get("L2MU_MQTT_PASSWORD") or None
        if password_file is not None:
            try:
                lines = password_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise MqttError(f"--password-file {password_file}: cannot read it ({exc.strerror})") from None
            password = lines[0] if lines else ""
        if password is not None and not username:
            raise MqttError("a password is given but no username (--username or L2MU_MQTT_USERNAME)")
        for name, path in (("--ca-file", ca_file), ("--cert-file", cert_file), ("--key-file", key_file)):
            if path is not None and not path.is_file():
                raise MqttError(f"{name} {path}: file not found")
        if key_file is not None and cert_file is None:
            raise MqttError("--key-file needs --cert-file")
        return cls(username, password, ca_file, cert_file, key_file)

    @property
    def wants_tls(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


def _why(exc: OSError) -> str:
    """An OSError as its reason alone ("Connection refused"), without errno numbers or repeated host names."""
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def encode(payload: dict) -> str:
    """Strict JSON: a NaN or infinity in a payload is a bug upstream (the pipeline drops non-finite samples),
    so it raises ValueError here instead of going out as `NaN`, which JSON parsers reject."""
    return json.dumps(payload, allow_nan=False)


def status_topic(prefix: str, agent_id: str) -> str:
    return f"{prefix}/status/{agent_id}"


def activity_topic(prefix: str, watch_id: str) -> str:
    return f"{prefix}/activity/{watch_id}"


def scores_topic(prefix: str, watch_id: str) -> str:
    return f"{prefix}/scores/{watch_id}"


def watch_state_topic(prefix: str, watch_id: str) -> str:
    return f"{prefix}/watch/{watch_id}/state"


class MqttPublisher:
    """Keeps one session to the broker; the will announces `offline` if the agent dies."""

    def __init__(self, url: str, agent_id: str, prefix: str = DEFAULTS.topic_prefix,
                 security: MqttSecurity | None = None, outbox: Outbox | None = None, protocol: str = "5",
                 discovery: list[tuple[str, str]] | None = None, discovery_prefix: str = DEFAULTS.ha_prefix,
                 on_delivered: Callable[[str, str, float], None] | None = None,
                 slow_after_s: float = DEFAULTS.slow_broker_s,
                 on_connection: Callable[[bool], None] | None = None,
                 retry_min_s: float = DEFAULTS.mqtt_retry_min_s, retry_max_s: float = DEFAULTS.mqtt_retry_max_s,
                 ) -> None:
        """on_delivered(topic, payload, monotonic time of the PUBACK) is called, on the sender thread, for
        every decision the broker accepted (the load benchmark measures latency with it). on_connection(up)
        is called on paho's thread whenever the session opens (True) or is lost (False)."""
        self.address = BrokerAddress.parse(url)
        self.prefix = prefix
        self.agent_id = agent_id
        self.security = security or MqttSecurity()
        if self.security.wants_tls and not self.address.tls:
            raise MqttError(f"broker URL {url!r}: TLS files are given, so use mqtts://")
        if protocol not in ("5", "3.1.1"):
            raise MqttError(f"MQTT protocol must be 5 or 3.1.1, got {protocol!r}")
        self.outbox = outbox if outbox is not None else Outbox()  # an empty Outbox is falsy
        self.discovery = discovery or []  # (topic, payload) Home Assistant configs
        self.discovery_prefix = discovery_prefix
        self.on_delivered = on_delivered
        self.slow_after_s = slow_after_s
        self.on_connection = on_connection
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.connected = threading.Event()
        self._away_since: float | None = None  # monotonic time the broker was last found missing; None while up
        self._closing = threading.Event()
        self._connect_lock = threading.Lock()  # close() must not race a connector that is about to start the loop
        self._connector: threading.Thread | None = None
        self._answered = threading.Event()  # the broker replied to a CONNECT, yes or no
        self._events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._denied: set[str] = set()
        self._states: dict[str, str] = {}  # watch id → its latest state message, sent again on every connect
        self._states_lock = threading.Lock()
        self._states_online = False  # under the lock: a state either goes out now or with the connect's resend
        v5 = protocol == "5"
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"l2mu-agent-{agent_id}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True,
        )
        self._client.will_set(status_topic(prefix, agent_id), "offline", qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=retry_min_s, max_delay=retry_max_s)
        if self.security.username:
            self._client.username_pw_set(self.security.username, self.security.password)
        if self.address.tls:
            s = self.security
            try:
                self._client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None,
                                     certfile=str(s.cert_file) if s.cert_file else None,
                                     keyfile=str(s.key_file) if s.key_file else None)
            except (ssl.SSLError, OSError) as exc:
                raise MqttError(f"TLS files cannot be used: {exc}") from None
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()

    # --- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._answered.set()
        if reason_code.is_failure:
            hint = " (check the user name and password)" if self.security.username else ""
            log.error("broker %s:%d refused the connection: %s%s; retrying", self.address.host, self.address.port,
                      reason_code, hint)
            return
        client.publish(status_topic(self.prefix, self.agent_id), "online", qos=1, retain=True)
        if self.discovery:
            client.subscribe(f"{self.discovery_prefix}/{HA_STATUS}", qos=1)
            self._publish_discovery(client)
        # Watch states after the entities that read them; every one changed meanwhile goes out now.
        with self._states_lock:
            self._states_online = True
            for watch_id, payload in self._states.items():
                client.publish(watch_state_topic(self.prefix, watch_id), payload, qos=1, retain=True)
        self.connected.set()
        away_since, self._away_since = self._away_since, None
        self._events.put(("wake", away_since))
        if self.on_connection:
            self.on_connection(True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        was_connected = self.connected.is_set()
        self.connected.clear()
        with self._states_lock:
            self._states_online = False
        if was_connected:
            self._events.put(("down",))  # the sender stops handing over until the next "wake"
        if was_connected and reason_code != 0:  # a refused CONNECT was already reported by _on_connect
            self._away_since = time.monotonic()
            log.warning("lost the broker at %s:%d (%s); retrying", self.address.host, self.address.port, reason_code)
        if was_connected and self.on_connection:
            self.on_connection(False)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        # paho calls this holding its message lock: hand the ack to the sender, never touch shared state here.
        acknowledge_now(client)
        self._events.put(("ack", mid, reason_code, time.monotonic()))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        for rc in reason_codes:
            if rc.is_failure:
                log.error("broker denied subscribing to %s/%s (%s): Home Assistant restarts will not re-trigger "
                          "discovery", self.discovery_prefix, HA_STATUS, rc)

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        if msg.topic == f"{self.discovery_prefix}/{HA_STATUS}" and msg.payload == b"online":
            self._publish_discovery(client)

    def set_discovery(self, discovery: list[tuple[str, str]]) -> None:
        """New Home Assistant configs (a model swap changed the class list): published now if connected, and on
        every later connect. paho's publish may be called from any thread."""
        self.discovery = list(discovery)
        if self.connected.is_set():
            self._publish_discovery(self._client)

    def _publish_discovery(self, client: mqtt.Client) -> None:
        for topic, payload in self.discovery:
            client.publish(topic, payload, qos=1, retain=True)

    # --- sender thread: the only user of the outbox ---------------------------------------------

    def _send_loop(self) -> None:
        inflight: dict[int, int] = {}  # paho mid → outbox entry id
        topics: dict[int, str] = {}
        flushes: list[threading.Event] = []
        # Last acknowledgement, or hand-over with nothing in flight: how long the broker has kept us waiting.
        progress = time.monotonic()
        slow = False
        # The sender's own view of the session, from the events in its queue: `connected` is set before paho
        # resends what was in flight, so a hand-over decided by it could overtake those resends.
        online = False
        resent = False  # after a reconnect paho sends again what was in flight: nothing new may overtake it
        while True:
            try:
                event = self._events.get(timeout=1.0)
            except queue.Empty:
                event = ("tick",)
            kind = event[0]
            if kind == "stop":
                return
            if kind == "put":
                try:
                    self.outbox.put(*event[1:])
                except OSError as exc:  # e.g. a full disk under --queue-dir: lose this one, keep the agent going
                    log.error("could not queue a decision for %s: %s", event[1], exc)
            elif kind == "flush":
                flushes.append(event[1])  # queued behind every earlier put, so empty then means delivered
            elif kind == "down":
                online = False
            elif kind == "wake":
                online = True
                progress = time.monotonic()  # (re)connected: paho resends what is in flight, the clock restarts
                resent = bool(inflight)
                if event[1] is not None:  # it had been missing: say so once, here, where the queue's size is known
                    log.info("connected to MQTT broker %s:%d after %.0f s without it; delivering %d queued decisions",
                             self.address.host, self.address.port, progress - event[1], len(self.outbox))
            elif kind == "ack":
                _, mid, reason_code, acked_at = event
                entry_id = inflight.pop(mid, None)
                if entry_id is not None:  # else a status, state or discovery message
                    topic = topics.pop(mid)
                    progress = time.monotonic()
                    if slow:
                        slow = False
                        log.info("broker %s:%d acknowledges again", self.address.host, self.address.port)
                    # A refusal (ACL) is final: retrying would only block the queue behind it, so it counts as done.
                    if reason_code.is_failure and topic not in self._denied:
                        self._denied.add(topic)
                        log.error("broker denied publishing to %s (%s); check its ACL", topic, reason_code)
                    entry = self.outbox.unacked.get(entry_id)
                    self.outbox.ack(entry_id)
                    if self.on_delivered and entry is not None and not reason_code.is_failure:
                        self.on_delivered(entry.topic, entry.payload, acked_at)
            if inflight and not slow and online and time.monotonic() - progress > self.slow_after_s:
                slow = True  # one line per episode; decisions keep queueing in the outbox meanwhile
                log.warning("broker %s:%d has acknowledged nothing for %.0f s (slow broker or network); %d decisions "
                            "wait in the queue", self.address.host, self.address.port, self.slow_after_s,
                            len(self.outbox))
            resent = resent and bool(inflight)
            if len(inflight) < IN_FLIGHT and not resent and online:
                batch = self.outbox.take(IN_FLIGHT - len(inflight))
                if batch and not inflight:
                    progress = time.monotonic()  # the broker's clock starts when something waits on it
                for entry in batch:
                    info = self._client.publish(entry.topic, entry.payload, qos=1, retain=entry.retain)
                    inflight[info.mid] = entry.id
                    topics[info.mid] = entry.topic
            if flushes and len(self.outbox) == 0:
                for done in flushes:
                    done.set()
                flushes.clear()

    # --- API (agent thread) ----------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> bool:
        """Open the session; True once the broker answered. A broker that cannot be reached (no such host,
        connection refused, timeout) or that does not answer is logged once and tried again in the background
        while decisions queue: then False. A failed TLS handshake is a configuration error (MqttError); a broker
        that refuses the credentials is logged and retried, decisions queue meanwhile."""
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=30)
        except ssl.SSLError as exc:
            raise MqttError(f"TLS with MQTT broker {self.address.host}:{self.address.port} failed "
                            f"({exc.reason or exc})") from exc
        except OSError as exc:
            self._away_since = time.monotonic()
            log.warning("cannot reach MQTT broker %s:%d (%s); decisions are queued until it answers, retrying "
                        "every %g–%g s", self.address.host, self.address.port, _why(exc), self.retry_min_s,
                        self.retry_max_s)
            self._connector = threading.Thread(target=self._keep_connecting, name="mqtt-connector", daemon=True)
            self._connector.start()
            return False
        self._client.loop_start()
        if not self._answered.wait(timeout):
            # Reachable but silent (a hung broker, another service on that port): paho gives up on the CONNECT
            # after its keep-alive and reconnects by itself; decisions queue meanwhile.
            self._away_since = time.monotonic()
            log.warning("MQTT broker %s:%d took the connection but did not answer within %g s; decisions are "
                        "queued until it does", self.address.host, self.address.port, timeout)
            return False
        return True

    def _keep_connecting(self) -> None:
        """Connector thread: retry the first connection with back-off until it works or the publisher closes;
        then paho's own loop takes over (it reconnects after later losses by itself)."""
        delay, tls_failure = self.retry_min_s, None
        while not self._closing.wait(delay):
            delay = min(delay * 2, self.retry_max_s)
            with self._connect_lock:
                if self._closing.is_set():
                    return
                try:
                    self._client.connect(self.address.host, self.address.port, keepalive=30)
                except ssl.SSLError as exc:
                    # The broker is there now, but the handshake fails: worth one line per distinct reason.
                    reason = str(exc.reason or exc)
                    if reason != tls_failure:
                        tls_failure = reason
                        log.error("TLS with MQTT broker %s:%d failed (%s); retrying", self.address.host,
                                  self.address.port, reason)
                    continue
                except OSError:
                    continue  # still unreachable: the warning at start said so, and a retry every few s is no news
                self._client.loop_start()
                return

    def publish_decision(self, watch_id: str, payload: dict) -> None:
        # Retained: a subscriber that arrives late sees the current activity at once.
        self._events.put(("put", activity_topic(self.prefix, watch_id), encode(payload), True))

    def publish_state(self, watch_id: str, payload: dict) -> None:
        """A watch's state (l2mu.agent.watch_state): retained, QoS 1, only the latest counts, so it bypasses
        the decisions' queue; one that changed while the broker was away goes out on the next connect."""
        text = encode(payload)
        with self._states_lock:
            self._states[watch_id] = text
            if self._states_online:
                self._client.publish(watch_state_topic(self.prefix, watch_id), text, qos=1, retain=True)

    def publish_scores(self, watch_id: str, payload: dict) -> None:
        # Diagnostics only: QoS 0, not retained, not queued while the broker is away.
        if self.connected.is_set():
            self._client.publish(scores_topic(self.prefix, watch_id), encode(payload), qos=0, retain=False)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued decision is acknowledged; False if some are still waiting."""
        done = threading.Event()
        self._events.put(("flush", done))
        return done.wait(timeout)

    def close(self, drain_timeout: float = 10.0) -> None:
        """Deliver what is queued, say `offline` ourselves (a clean exit sends no will), then disconnect.
        Without an on-disk outbox it waits up to `drain_timeout` for the broker (it may be reconnecting);
        with one, what is left while the broker is away is delivered after the next start."""
        if (self.connected.is_set() or not self.outbox.persistent) and not self.flush(drain_timeout):
            log.warning("%d decisions not delivered at exit%s", len(self.outbox),
                        "; they stay in the queue directory" if self.outbox.persistent else "")
        self._closing.set()
        with self._connect_lock:  # a connector mid-attempt finishes it first; none starts paho's loop after this
            pass
        self._events.put(("stop",))
        self._sender.join(5)
        if self.connected.is_set():
            info = self._client.publish(status_topic(self.prefix, self.agent_id), "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # the broker went away meanwhile
                info.wait_for_publish(3)
        self._client.disconnect()
        self._client.loop_stop()
        self.outbox.close()
