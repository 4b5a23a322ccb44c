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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from l2mu.agent.daemon import Agent, DecisionSink, NullSink
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
        """Open the broker session (and the echo's); then tell systemd the agent is ready."""
        from l2mu.agent.mqtt import MqttPublisher

        if self.echo is not None:
            self.echo.start()
        if isinstance(self.sink, MqttPublisher):
            where = f"{self.sink.address.host}:{self.sink.address.port}"
            self.notifier.status(f"connecting to {where}")
            self.sink.connect()
            # Ready only now: the model loaded and the broker took the session, so systemd's ordering means something.
            self.notifier.ready(f"running: {len(self.sources)} watch(es), model {self.classifier.meta.name}, "
                                f"broker {where}")

    def run(self) -> None:
        """Serve until every watch ended, or SIGINT/SIGTERM."""
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self.agent.run())

    def summary_lines(self) -> list[str]:
        out = []
        for s in self.agent.sessions:
            line = f"{s.source.watch_id}: {s.seq} decisions"
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
    if classifier is None:
        classifier = ExecuTorchClassifier(resolve_model(s.model))
    agent_id = s.agent_id or default_agent_id()

    sink: DecisionSink = NullSink()
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
        discovery = [
            discovery_messages(s.ha_prefix, activity_topic(s.topic_prefix, src.watch_id),
                               status_topic(s.topic_prefix, agent_id), agent_id, src.watch_id,
                               classifier.meta.name, list(classifier.meta.class_names))
            for src in sources
        ] if s.ha_discovery else []
        if s.ha_discovery:
            for src in sources:
                discovery.extend(watch_state_discovery(
                    s.ha_prefix, watch_state_topic(s.topic_prefix, src.watch_id),
                    status_topic(s.topic_prefix, agent_id), agent_id, src.watch_id, classifier.meta.name))
        if s.echo if s.echo is not None else local is not None:
            truths = RecentTruths()
            echo = EchoSubscriber(url, s.topic_prefix, truths, security)
            stack.callback(echo.stop)  # after the publisher's drain (below): the last decisions are printed too
        outbox = Outbox(s.queue_dir, s.queue_size)
        stack.callback(outbox.close)
        publisher = MqttPublisher(url, agent_id, prefix=s.topic_prefix, security=security, outbox=outbox,
                                  protocol=protocol, discovery=discovery, discovery_prefix=s.ha_prefix,
                                  on_delivered=on_delivered, slow_after_s=s.slow_broker_s)
        stack.callback(publisher.close, drain_timeout=s.drain_s)
        sink = publisher

    def decided(payload: dict, truth: str) -> None:
        if truths is not None:
            truths.note(payload, truth)
        if on_decision is not None:
            on_decision(payload, truth)

    agent = Agent(sources, classifier, sink, s.decision_period,
                  on_decision=decided if truths is not None or on_decision is not None else None,
                  smoothing=s.smoothing, smoothing_window=s.smoothing_window, raw_scores=s.raw_scores,
                  inference=s.inference, notifier=notifier)
    if publish:
        from l2mu.agent.watch_state import WatchStateBoard

        agent.states = WatchStateBoard(sink.publish_state, s.state_interval)  # type: ignore[attr-defined]
    return AgentApp(s, agent, classifier, sources, sink, notifier, agent_id, url, local, echo, stack)


def serve(settings: Settings, say: Callable[[str], None] | None = None) -> None:
    """`l2mu-agent run`: build, connect, serve until stopped, then stop everything; the summary goes to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Until the main loop takes over SIGTERM, treat it like Ctrl-C so start-up is interruptible cleanly.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
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
            app.run()
        for line in app.summary_lines():
            print(line, file=sys.stderr, flush=True)
        app.raise_for_failures()
    finally:
        signal.signal(signal.SIGTERM, previous)
