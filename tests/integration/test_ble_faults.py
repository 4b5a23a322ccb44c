"""BlueZ faults against a running agent: unmodified bleak (BlueZ backend) → real D-Bus → the virtual BlueZ.

One `l2mu-agent run` process serves three virtual watches over the private bus and a replayed recording
(`demo`), with short backoffs and stall timeout from its config file and no `--retry-budget` (watches are
kept for ever). One fault after the other is injected into the virtual BlueZ; for each, a test checks that the
agent still runs, that the watch's decisions resume with no window across the outage, that a watch the fault
does not touch is never interrupted, and the published state sequence. With L2MU_BLE_FAULTS_JSON=FILE the
run also writes each fault's log lines and recovery times (fault end → streaming state, → first new decision)
there (bench/ble-faults.json); they are measured, never asserted."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest

from l2mu.agent.sim.bluez import VirtualAdapter, VirtualBluetooth
from l2mu.agent.sim.dbus_daemon import PrivateBus
from l2mu.agent.sim.watches import MotionTape, make_watch
from l2mu.agent.sources import demo_recording, topic_safe
from tests.support.ble import AgentProcess
from tests.support.cli import REPO
from tests.support.mqtt import SCHEMA, Subscriber

pytestmark = pytest.mark.ble

STATE_SCHEMA = json.loads((REPO / "docs" / "watch-state.schema.json").read_text())
SPEED = 4.0  # watch clocks (and the replay) run 4× real time
PERIOD = 0.5  # watch-clock seconds between decisions: 8 a second per watch
FAULTY = "C0:FF:EE:00:06:01"  # the watch each per-device fault hits
STEADY = "C0:FF:EE:00:06:02"  # a Bluetooth watch per-device faults leave alone
LATE = "C0:FF:EE:00:06:03"  # absent when the agent starts
DEMO = "demo"  # no Bluetooth: adapter-wide faults leave it alone
LIVE = (FAULTY, STEADY, LATE)
APPEAR_S = 4.0  # the late watch comes into range this long after the agent started
OUTAGE_S = 1.5  # how long an adapter-wide fault lasts
CONFIG = """
backoff_initial = 0.2
backoff_max = 1.0
stall_timeout = 1.0
state_interval = 2.0
"""


def wid(address: str) -> str:
    return topic_safe(address)


@dataclass
class Fault:
    name: str
    hits: tuple[str, ...]  # watch specs whose stream it interrupts
    spared: tuple[str, ...]  # served throughout
    start: float = 0.0  # wall time the fault began
    end: float = 0.0  # and ended (the watch can be reached again)
    log: list[str] = field(default_factory=list)  # agent log lines while it lasted and until recovery


@dataclass
class Run:
    decisions: dict[str, list[tuple[float, dict]]]
    states: dict[str, list[tuple[float, dict]]]
    faults: dict[str, Fault]
    started: float
    appeared: float
    returncode: int
    log: list[str]
    events: list[tuple[str, str, str]]  # the virtual BlueZ's (member, address, why)

    def decisions_of(self, spec: str) -> list[dict]:
        return [d for _, d in self.decisions[wid(spec)]]

    def first_decision_after(self, spec: str, t: float) -> float:
        return next(at for at, _ in self.decisions[wid(spec)] if at > t)

    def streaming_after(self, spec: str, t: float) -> float:
        """When the watch was streaming again after losing it after t (not a periodic repeat from before)."""
        later = [(at, s["state"]) for at, s in self.states[wid(spec)] if at > t]
        lost = next(i for i, (_, state) in enumerate(later) if state != "streaming")
        return next(at for at, state in later[lost:] if state == "streaming")


class Collector:
    """Decisions and state messages as they arrive, on the subscriber's thread."""

    def __init__(self, port: int) -> None:
        self.sub = Subscriber(port, "har/#")
        self.decisions: dict[str, list[tuple[float, dict]]] = {wid(s): [] for s in (*LIVE, DEMO)}
        self.states: dict[str, list[tuple[float, dict]]] = {wid(s): [] for s in (*LIVE, DEMO)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, retained = self.sub.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if retained:
                continue  # an earlier run's
            parts = topic.split("/")
            if parts[1] == "activity" and parts[2] in self.decisions:
                self.decisions[parts[2]].append((time.time(), json.loads(payload)))
            elif parts[1] == "watch" and parts[3] == "state" and parts[2] in self.states:
                self.states[parts[2]].append((time.time(), json.loads(payload)))

    def count_since(self, spec: str, t: float) -> int:
        return sum(at >= t for at, _ in self.decisions[wid(spec)])

    def wait(self, until: Callable[[], bool], agent: AgentProcess, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline or agent.proc.poll() is not None:
                counts = {w: len(v) for w, v in self.decisions.items()}
                raise AssertionError(f"{what}: decisions so far {counts}; agent log:\n" + "\n".join(agent.lines[-40:]))
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sub.close()


@pytest.fixture(scope="module")
def run(tiny_program: Path, mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Run:  # noqa: ANN001
    from l2mu.agent.sim.dbus_daemon import dbus_daemon_binary

    if dbus_daemon_binary() is None:
        pytest.fail("dbus-daemon is not installed (apt-get install dbus)")
    tape = MotionTape.from_file(demo_recording())
    config = tmp_path_factory.mktemp("ble-faults") / "agent.toml"
    config.write_text(CONFIG)
    watches = {a: make_watch("l2mu", tape, a, SPEED) for a in LIVE}
    with PrivateBus() as bus, VirtualBluetooth(bus.address, temporary_timeout_s=3.0, connect_timeout_s=0.5) as vb:
        for address, watch in watches.items():
            vb.call(lambda a, w=watch, near=address != LATE: a.add(w, in_range=near))
        collector = Collector(mosquitto.port)
        watch_args = [x for spec in (*LIVE, DEMO) for x in ("--watch", spec)]
        started = time.time()
        agent = AgentProcess(bus.address, *watch_args, "--config", str(config), "--mqtt", mosquitto.url,
                             "--model", str(tiny_program), "--agent-id", "ble-faults", "--scan-timeout", "1",
                             "--decision-period", f"{PERIOD:g}", "--speed", f"{SPEED:g}")
        faults: dict[str, Fault] = {}
        try:
            collector.wait(lambda: all(collector.count_since(s, 0) >= 3 for s in (FAULTY, STEADY, DEMO)), agent,
                           120, "first decisions")
            # The late watch: absent at start, in range APPEAR_S after the agent started.
            time.sleep(max(0.0, started + APPEAR_S - time.time()))
            appeared = time.time()
            vb.call(lambda a: a.set_in_range(LATE, True))
            collector.wait(lambda: collector.count_since(LATE, appeared) >= 3, agent, 60, "the late watch")

            def inject(fault: Fault, begin: Callable[[VirtualAdapter], object],
                       finish: Callable[[VirtualAdapter], object] | None, hold_s: float) -> None:
                lines = len(agent.lines)
                fault.start = time.time()
                vb.call(begin)
                time.sleep(hold_s)
                if finish is not None:
                    vb.call(finish)
                fault.end = time.time()
                collector.wait(lambda: all(collector.count_since(s, fault.end) >= 4 for s in fault.hits)
                               and all(collector.count_since(s, fault.end) >= 4 for s in fault.spared), agent, 60,
                               fault.name)
                time.sleep(0.5)
                fault.log = agent.lines[lines:]
                faults[fault.name] = fault

            def failing_connects(error: str, text: str) -> Callable[[VirtualAdapter], object]:
                def begin(a: VirtualAdapter) -> None:
                    a.fail_connect(FAULTY, error, text, times=3)
                    a.drop_link(FAULTY)
                return begin

            one = (FAULTY,)
            others = (STEADY, LATE, DEMO)
            # A stall ends when the agent notices it and hangs up: the fault's end is when it is reachable again.
            inject(Fault("stall", one, others), lambda a: a.stall_notifications(FAULTY), None, 0.0)
            inject(Fault("abort", one, others),
                   failing_connects("org.bluez.Error.Failed", "le-connection-abort-by-local"), None, 0.0)
            inject(Fault("in_progress", one, others),
                   failing_connects("org.bluez.Error.InProgress", "In Progress"), None, 0.0)
            inject(Fault("power", LIVE, (DEMO,)), lambda a: a.set_powered(False), lambda a: a.set_powered(True),
                   OUTAGE_S)
            inject(Fault("adapter", LIVE, (DEMO,)), lambda a: a.remove_adapter(), lambda a: a.add_adapter(),
                   OUTAGE_S)
            inject(Fault("bluetoothd", LIVE, (DEMO,)), lambda a: a.stop_bluez(), lambda a: a.start_bluez(),
                   OUTAGE_S)
            alive = agent.proc.poll() is None
            events = vb.call(lambda a: list(a.events))
        finally:
            rc = agent.stop()
            collector.close()
    assert alive, "\n".join(agent.lines[-40:])
    result = Run(collector.decisions, collector.states, faults, started, appeared, rc, agent.lines, events)
    if os.environ.get("L2MU_BLE_FAULTS_JSON"):  # the figures, for the README's fault table (not asserted)
        Path(os.environ["L2MU_BLE_FAULTS_JSON"]).write_text(json.dumps(figures(result), indent=2) + "\n")
    return result


def figures(run: Run) -> dict:
    """Per fault: how long it lasted, its end → the hit watches streaming again and → their first new decision
    (the slowest watch), and the agent's WARNING/ERROR lines about them. The late watch: its appearance → both."""
    out: dict[str, dict] = {}
    for name, f in run.faults.items():
        streaming = max(run.streaming_after(s, f.start) for s in f.hits)
        decision = max(run.first_decision_after(s, max(f.end, run.streaming_after(s, f.start))) for s in f.hits)
        hit = [a for a in f.hits if a != DEMO]
        out[name] = {"fault_s": round(f.end - f.start, 3), "to_streaming_s": round(streaming - f.end, 3),
                     "to_decision_s": round(decision - f.end, 3),
                     "log": [ln for ln in f.log
                             if ln.startswith(("WARNING l2mu", "ERROR")) and any(a in ln for a in hit)]}
    late = run.appeared
    out["absent_at_start"] = {"appeared_after_s": round(late - run.started, 3),
                              "to_streaming_s": round(run.streaming_after(LATE, late) - late, 3),
                              "to_decision_s": round(run.first_decision_after(LATE, late) - late, 3),
                              "log": [ln for ln in run.log if f"{LATE}: connection attempt" in ln][:2]}
    return out


def check_resumed_without_spanning(run: Run, spec: str, fault: Fault) -> None:
    """seq unbroken; across the outage one jump in window times, and no window spanning it."""
    published = run.decisions_of(spec)
    assert [d["seq"] for d in published] == list(range(len(published)))
    for d in published:
        jsonschema.validate(d, SCHEMA)
    arrivals = [at for at, _ in run.decisions[wid(spec)]]
    recovered = run.streaming_after(spec, fault.start)
    before = max(i for i, at in enumerate(arrivals) if at < fault.start)
    around = [i for i in range(before, len(published) - 1) if arrivals[i + 1] <= recovered + 1.0]
    assert any(arrivals[i + 1] > recovered for i in around), "no decision after the recovery"
    holes = [i for i in around if published[i + 1]["window_end"] - published[i]["window_end"] > PERIOD + 0.05]
    assert len(holes) == 1, [(published[i]["window_end"], published[i + 1]["window_end"]) for i in around]
    a, b = published[holes[0]], published[holes[0] + 1]
    assert b["window_start"] > a["window_end"], (a, b)  # no window across the outage
    assert b["window_end"] - a["window_end"] > PERIOD + 0.5, (a, b)  # the watch's clock ran on while it was away
    assert arrivals[holes[0]] < recovered < arrivals[holes[0] + 1]


def check_uninterrupted(run: Run, spec: str, fault: Fault) -> None:
    published = run.decisions_of(spec)
    assert [d["seq"] for d in published] == list(range(len(published)))
    arrivals = [at for at, _ in run.decisions[wid(spec)] if fault.start - 1 <= at <= fault.end + 1]
    assert arrivals, f"{spec}: no decision during {fault.name}"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # 8 decisions a second: a hole of a second would be an interruption (a busy machine delays a few hundred ms).
    assert max(gaps, default=0) < 1.0, (spec, fault.name, max(gaps))


def states_during(run: Run, spec: str, fault: Fault) -> list[tuple[str, str | None]]:
    upto = run.streaming_after(spec, fault.start)
    return [(s["state"], s["reason"]) for at, s in run.states[wid(spec)] if fault.start <= at <= upto]


def check_fault(run: Run, name: str) -> Fault:
    fault = run.faults[name]
    for spec in fault.hits:
        check_resumed_without_spanning(run, spec, fault)
        states = states_during(run, spec, fault)
        # A periodic or battery message may still say `streaming` before the agent noticed the fault (a stall
        # is noticed only `stall_timeout` after it began): what counts is what follows it.
        noticed = next((i for i, (state, _) in enumerate(states) if state != "streaming"), len(states))
        assert noticed < len(states) and all(r is None for _, r in states[:noticed]), states
        states = states[noticed:]
        assert states[0][0] == "reconnecting" and states[-1] == ("streaming", None), states
        assert all(s in ("reconnecting", "streaming") for s, _ in states), states
    for spec in fault.spared:
        check_uninterrupted(run, spec, fault)
    assert not [ln for ln in fault.log if ln.startswith("ERROR")], fault.log
    if name != "stall":  # each loss is seen as what it is (a missed disconnect would only show as a stall)
        assert not [ln for ln in fault.log if "no notification for" in ln], fault.log
    return fault


def test_the_agent_ran_through_every_fault(run: Run) -> None:
    assert run.returncode == 0, "\n".join(run.log[-30:])  # stopped by SIGINT at the end, not by a fault
    for states in run.states.values():
        for _, s in states:
            jsonschema.validate(s, STATE_SCHEMA)


def test_watch_absent_at_start_is_searched_for_until_it_appears(run: Run) -> None:
    states = [(at, s) for at, s in run.states[wid(LATE)]]
    assert states[0][1]["state"] == "searching"
    searching = [s for at, s in states if at < run.appeared]
    assert searching and all(s["state"] == "searching" for s in searching)
    assert "no such watch found" in (searching[-1]["reason"] or "")
    names = [s["state"] for _, s in states]
    assert names.index("connecting") < names.index("streaming")
    assert not [d for at, d in run.decisions[wid(LATE)] if at < run.appeared]
    assert run.decisions_of(LATE)[0]["seq"] == 0
    tries = [ln for ln in run.log if f"{LATE}: connection attempt" in ln and ln.startswith("WARNING")]
    assert len(tries) >= 2  # looked for again and again, with backoff
    assert not any(ln.startswith("ERROR") and LATE in ln for ln in run.log)


def test_notification_stall_is_a_lost_link(run: Run) -> None:
    fault = check_fault(run, "stall")
    assert any(f"{FAULTY}: no notification for 1 s while connected; treating it as a lost link" in ln
               for ln in fault.log)
    assert ("reconnecting", "stalled") in states_during(run, FAULTY, fault)


def test_connect_le_connection_abort_by_local(run: Run) -> None:
    fault = check_fault(run, "abort")
    # bleak itself retries this one (BlueZ did connect, then dropped it): three aborts, one reconnection.
    aborts = [e for e in run.events if e == ("Disconnected", FAULTY, "le-connection-abort-by-local")]
    assert len(aborts) == 3
    assert any(f"{FAULTY}: link lost; reconnecting until it is back" in ln for ln in fault.log), fault.log
    assert any(f"{FAULTY}: connected again" in ln for ln in fault.log), fault.log


def test_connect_in_progress(run: Run) -> None:
    fault = check_fault(run, "in_progress")
    assert any(f"{FAULTY}: connection attempt 1 failed:" in ln and "[org.bluez.Error.InProgress] In Progress" in ln
               for ln in fault.log), fault.log
    assert any("org.bluez.Error.InProgress" in (r or "") for _, r in states_during(run, FAULTY, fault))


def test_adapter_power_off_and_on(run: Run) -> None:
    fault = check_fault(run, "power")
    assert any("[org.bluez.Error.NotReady] Resource Not Ready" in ln for ln in fault.log), fault.log


def test_adapter_removed_and_added_again(run: Run) -> None:
    fault = check_fault(run, "adapter")
    assert any("Bluetooth is not available: No Bluetooth adapters found." in ln for ln in fault.log), fault.log


def test_bluetoothd_restart(run: Run) -> None:
    fault = check_fault(run, "bluetoothd")
    assert any("connection attempt" in ln and "failed" in ln for ln in fault.log), fault.log
    assert [e for e in run.events if e[0] == "Disconnected" and e[2] == "removed"]  # bluetoothd dropped them


def test_battery_and_rssi_are_published(run: Run) -> None:
    streaming = [s for _, s in run.states[wid(FAULTY)] if s["state"] == "streaming"]
    assert streaming and all(isinstance(s["battery"], int) and 0 < s["battery"] <= 100 for s in streaming)
    assert any(isinstance(s["rssi"], int) and -70 < s["rssi"] < -40 for s in streaming)
    assert any(s["rate_hz"] > 50 for s in streaming)  # 25 Hz acc + gyro at 4× speed: about 200 a second
    demo = [s for _, s in run.states[wid(DEMO)]]
    assert demo and all(s["battery"] is None and s["rssi"] is None for s in demo)
