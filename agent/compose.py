"""The composition root: one agent built from its settings, owning everything it starts.

`build_agent(settings)` is the only place that wires sources, model, pipeline, smoothing, publisher,
outbox, local broker, echo subscriber and systemd notifier together; `run`, the load bench, the soaks
and `stream-accuracy` all come through it, so they measure the agent users run.

Each part that needs stopping is registered the moment it starts, on one exit stack: whatever goes
wrong later — a queue directory that is a file, a broker that refuses, Ctrl-C or SIGTERM while the
model loads, a crash in a watch — `close()` stops what was started, newest first, and nothing is left
running (a local mosquitto used to outlive a failed start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from l2mu.agent.daemon import Agent, DecisionSink, NullSink, running_status
from l2mu.agent.echo import EchoSubscriber, RecentTruths
from l2mu.agent.errors import SourceError, UsageError
from l2mu.agent.runtime import ExecuTorchClassifier
from l2mu.agent.sdnotify import Notifier
from l2mu.agent.settings import INFERENCE_KINDS, Settings
from l2mu.agent.sources import Source

log = logging.getLogger(__name__)


def default_agent_id() -> str:
    from l2mu.agent.sources import topic_safe

    return topic_safe(socket.gethostname())


@dataclass
class AgentApp:
    """A built agent and what it started. Use as a context manager, or call `close()` (idempotent)."""

    settings: Settings
    agent: Agent
    classifier: ExecuTorchClassifier
    sources: list[Source]
    sink: DecisionSink
    notifier: Notifier
    agent_id: str
    broker_url: str | None = None
    local_broker: object | None = None  # l2mu.agent.broker.LocalBroker when the agent started its own
    echo: EchoSubscriber | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _closed: bool = False
    _ready: bool = False
    _status_lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> AgentApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything that was started, newest first: the publisher drains, then the echo and the
        local broker stop."""
        if not self._closed:
            self._closed = True
            self.notifier.stopping()
        self._stack.close()

    def connect(self) -> None:
        """Open the broker session (and the echo's); then tell systemd the agent is ready.

        READY=1 means: the model loaded and every decision from now on is kept — published, or queued until the
        broker answers. A broker that is down is not a failed start (systemd would only restart the agent into
        the same wait, and the queue would be lost each time); STATUS= says whether it is reached."""
        from l2mu.agent.mqtt import MqttPublisher

        if self.echo is not None:
            self.echo.start()
        if isinstance(self.sink, MqttPublisher):
            where = f"{self.sink.address.host}:{self.sink.address.port}"
            self.notifier.status(f"connecting to {where}")
            self.sink.on_connection = lambda _up: self._report(where)  # STATUS= follows the broker
            self.agent.ready_again = lambda note: self._report(where, ready=True, note=note)  # after a reload
            self.sink.connect()
            self._report(where, ready=True)

    def _report(self, where: str, ready: bool = False, note: str = "") -> None:
        """READY=1 (at start and after each reload) or STATUS= with the broker's state now; paho's thread and
        the agent's both report, under one lock, so an older line never overwrites a newer one."""
        with self._status_lock:
            line = note + self._status_line(where)
            if ready:
                self._ready = True
                self.notifier.ready(line)
            elif self._ready:
                self.notifier.status(line)

    def _status_line(self, where: str) -> str:
        running = running_status(len(self.sources), self.agent.classifier)  # a reload may have swapped it
        return (f"{running}, broker {where}" if self.sink.connected.is_set()  # type: ignore[attr-defined]
                else f"{running}; broker {where} not reached, decisions are queued")

    def run(self) -> None:
        """Serve until every watch ended, or SIGINT/SIGTERM."""
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self.agent.run())

    def summary_lines(self) -> list[str]:
        out = []
        for s in self.agent.sessions:
            line = f"{s.source.watch_id}: {s.seq} decisions"
            counters = s.aligner.counters
            if counters.gaps:
                line += f", {counters.gaps} gaps"
            if counters.samples_invalid:
                line += f" ({counters.samples_invalid} invalid samples dropped)"
            if s.labelled:
                line += f", {s.correct}/{s.labelled} match the recording's label ({s.correct / s.labelled:.1%})"
            out.append(line)
        return out

    def raise_for_failures(self) -> None:
        """The agent ended because watches failed, not on request: that is the command's error."""
        if self.agent.failures and not self.agent.stop_requested:
            raise SourceError("; ".join(str(e) for e in self.agent.failures.values()))


def build_agent(settings: Settings, *, sources: Sequence[Source] | None = None,
                classifier: ExecuTorchClassifier | None = None, publish: bool = True,
                on_decision: Callable[[dict, str], None] | None = None,
                on_delivered: Callable[[str, str, float], None] | None = None,
                say: Callable[[str], None] | None = None) -> AgentApp:
    """The agent `settings` describe. `sources` (default: parsed from `settings.watch`) and `classifier`
    (default: `settings.model`, loaded) may be given ready; `publish=False` sends decisions nowhere (no
    broker). `on_decision(payload, true label)` sees each decision before it is published; `on_delivered`
    each PUBACK (l2mu.agent.mqtt.MqttPublisher). `say` prints start-up notes (default: stderr).
    On any failure, what was already started is stopped before the error propagates."""
    stack = contextlib.ExitStack()
    try:
        return _build(settings, stack, sources, classifier, publish, on_decision, on_delivered,
                      say or (lambda line: print(line, file=sys.stderr, flush=True)))
    except BaseException:
        stack.close()
        raise


def _build(settings: Settings, stack: contextlib.ExitStack, sources: Sequence[Source] | None,
           classifier: ExecuTorchClassifier | None, publish: bool, on_decision: Callable[[dict, str], None] | None,
           on_delivered: Callable[[str, str, float], None] | None, say: Callable[[str], None]) -> AgentApp:
    from l2mu.agent.runtime import resolve_model
    from l2mu.agent.smoothing import make_smoother

    s = settings
    make_smoother(s.smoothing, 2, s.smoothing_window)  # a bad --smoothing fails before the model loads
    if s.inference not in INFERENCE_KINDS:
        raise UsageError(f"inference must be step or window, got {s.inference!r}")
    security = None
    if publish:
        from l2mu.agent.mqtt import MqttSecurity

        security = MqttSecurity.from_options(s.username, s.password_file, s.ca_file, s.cert_file, s.key_file)
    if sources is None:
        from l2mu.agent.ble import BleOptions
        from l2mu.agent.sources import parse_sources

        ble = BleOptions(scan_timeout_s=s.scan_timeout, retry_budget_s=s.retry_budget, intake_queue=s.intake_queue,
                         intake_max_age_s=s.intake_max_age_s, backoff_initial_s=s.backoff_initial,
                         backoff_max_s=s.backoff_max, stall_timeout_s=s.stall_timeout)
        sources = parse_sources(s.watch, s.speed, s.protocol, ble)
    sources = list(sources)
    if len({src.watch_id for src in sources}) != len(sources):
        raise UsageError("two --watch sources have the same watch id")
    notifier = Notifier()  # systemd Type=notify; does nothing outside systemd
    stack.callback(notifier.close)
    notifier.status("loading model")
    # What SIGHUP loads again: the --model name or path, resolved afresh (the file may have been replaced in
    # place), or the file of a program the caller loaded.
    model_spec = s.model if classifier is None else str(classifier.path)
    if classifier is None:
        classifier = ExecuTorchClassifier(resolve_model(model_spec))
    agent_id = s.agent_id or default_agent_id()

    sink: DecisionSink = NullSink()
    publisher = None
    url, local, echo, truths = None, None, None, None
    if publish:
        from l2mu.agent.hass import discovery_messages, watch_state_discovery
        from l2mu.agent.mqtt import MqttPublisher, activity_topic, status_topic, watch_state_topic
        from l2mu.agent.outbox import Outbox

        url = s.mqtt
        if url is None:
            from l2mu.agent.broker import LocalBroker

            local = LocalBroker(prefer=s.broker)
            stack.callback(local.stop)  # before start(): a broker that half-started is stopped too
            local.start()
            url = local.url
            say(f"started a local {local.kind} broker at {url}")
        protocol = s.mqtt_protocol or ("3.1.1" if local is not None and local.kind == "amqtt" else "5")

        def discovery_for(clf: ExecuTorchClassifier) -> list[tuple[str, str]]:
            return [
                discovery_messages(s.ha_prefix, activity_topic(s.topic_prefix, src.watch_id),
                                   status_topic(s.topic_prefix, agent_id), agent_id, src.watch_id,
                                   clf.meta.name, list(clf.meta.class_names))
                for src in sources
            ] + [
                message
                for src in sources
                for message in watch_state_discovery(
                    s.ha_prefix, watch_state_topic(s.topic_prefix, src.watch_id),
                    status_topic(s.topic_prefix, agent_id), agent_id, src.watch_id, clf.meta.name)
            ] if s.ha_discovery else []

        discovery = discovery_for(classifier)
        if s.echo if s.echo is not None else local is not None:
            truths = RecentTruths()
            echo = EchoSubscriber(url, s.topic_prefix, truths, security)
            stack.callback(echo.stop)  # after the publisher's drain (below): the last decisions are printed too
        outbox = Outbox(s.queue_dir, s.queue_size)
        stack.callback(outbox.close)
        publisher = MqttPublisher(url, agent_id, prefix=s.topic_prefix, security=security, outbox=outbox,
                                  protocol=protocol, discovery=discovery, discovery_prefix=s.ha_prefix,
                                  on_delivered=on_delivered, slow_after_s=s.slow_broker_s,
                                  retry_min_s=s.mqtt_retry_min_s, retry_max_s=s.mqtt_retry_max_s)
        stack.callback(publisher.close, drain_timeout=s.drain_s)
        sink = publisher

    def decided(payload: dict, truth: str) -> None:
        if truths is not None:
            truths.note(payload, truth)
        if on_decision is not None:
            on_decision(payload, truth)

    def swapped(clf: ExecuTorchClassifier) -> None:
        if publisher is not None and s.ha_discovery:
            publisher.set_discovery(discovery_for(clf))  # the entity's options follow the new class list

    agent = Agent(sources, classifier, sink, s.decision_period,
                  on_decision=decided if truths is not None or on_decision is not None else None,
                  smoothing=s.smoothing, smoothing_window=s.smoothing_window, raw_scores=s.raw_scores,
                  inference=s.inference, notifier=notifier,
                  loader=lambda: ExecuTorchClassifier(resolve_model(model_spec)), on_swap=swapped)
    if publish:
        from l2mu.agent.watch_state import WatchStateBoard

        agent.states = WatchStateBoard(sink.publish_state, s.state_interval)  # type: ignore[attr-defined]
    return AgentApp(s, agent, classifier, sources, sink, notifier, agent_id, url, local, echo, stack)


def serve(settings: Settings, say: Callable[[str], None] | None = None) -> None:
    """`l2mu-agent run`: build, connect, serve until stopped, then stop everything; the summary goes to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Until the main loop takes over SIGTERM, treat it like Ctrl-C so start-up is interruptible cleanly.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    # SIGHUP's default would kill the agent: before the main loop takes it over it is noted (the loop then
    # reloads once), while stopping it is ignored.
    hups: list[int] = []
    previous_hup = signal.signal(signal.SIGHUP, lambda signum, frame: hups.append(signum))
    try:
        try:
            app = build_agent(settings, say=say)
        except KeyboardInterrupt:
            return
        with app:
            try:
                app.connect()
            except KeyboardInterrupt:
                return
            app.agent.reload_requested = bool(hups)
            app.run()
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for line in app.summary_lines():
            print(line, file=sys.stderr, flush=True)
        app.raise_for_failures()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
