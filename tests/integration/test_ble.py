"""Live Bluetooth end to end: unmodified bleak (BlueZ backend) → real D-Bus → the virtual BlueZ watch.

A private dbus-daemon carries a BlueZ-compatible service (agent/sim/bluez.py) whose virtual watches stream a
real WISDM wearer (the bundled demo recording) in each protocol's wire format, 4× faster than real time. The agent
runs as the real `l2mu-agent run` process, finds the watches by scanning, connects through bleak-retry-connector
and publishes decisions to a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from l2mu.agent.ble import BleError, BleOptions, BleSource
from l2mu.agent.sim.bluez import VirtualAdapter, VirtualBluetooth
from l2mu.agent.sim.dbus_daemon import PrivateBus
from l2mu.agent.sim.watches import DEFAULT_ADDRESSES, PROTOCOLS, MotionTape, VirtualWatch, make_watch
from l2mu.agent.sources import demo_recording, topic_safe
from tests.support.ble import AgentProcess, FitnessBand, export, tiny_acc_checkpoint
from tests.support.cli import cli_command
from tests.support.mqtt import SCHEMA, Subscriber

SPEED = 4.0  # the watches' clocks run 4× real time, so a test sees many windows in a few seconds


PERIOD = 0.5  # seconds of watch clock between decisions: one tiny (10-sample) window after the other


WATCHES = {p: DEFAULT_ADDRESSES[p] for p in PROTOCOLS}


STALE = WATCHES["metawear"]  # BlueZ still holds a connection to it that nobody owns when the agent starts


DROP = "C0:FF:EE:00:01:05"  # l2mu: loses its link, stays away 1.5 s, comes back


VANISH = "C0:FF:EE:00:02:01"  # polar: leaves for good


STAY = "C0:FF:EE:00:02:03"  # metawear: served throughout


RECORDER = "C0:FF:EE:00:04:05"  # l2mu, for `record`


BAND = "C0:FF:EE:00:03:00"  # advertises, connects, but is no watch


ACQUIRE = "C0:FF:EE:00:05:05"  # l2mu, read through AcquireNotify


UNKNOWN = "C0:FF:EE:0F:0F:0F"  # nowhere


ACC_ONLY = {"infinitime", "bangle"}


@dataclass
class Bluetooth:
    address: str
    virtual: VirtualBluetooth
    watches: dict[str, VirtualWatch]

    def control(self, fn: Callable[[VirtualAdapter], object]) -> object:
        return self.virtual.call(fn)

    def events(self, address: str) -> list[tuple[str, str]]:
        return [(m, why) for m, a, why in self.control(lambda a: list(a.events)) if a == address]


@pytest.fixture(scope="module")
def tape() -> MotionTape:
    return MotionTape.from_file(demo_recording())  # a real WISDM wearer


@pytest.fixture(scope="module")
def bluetooth(tape: MotionTape):
    from l2mu.agent.sim.dbus_daemon import dbus_daemon_binary

    if dbus_daemon_binary() is None:
        pytest.fail("dbus-daemon is not installed (apt-get install dbus)")
    extra = {DROP: "l2mu", VANISH: "polar", STAY: "metawear", RECORDER: "l2mu", ACQUIRE: "l2mu"}
    watches = {a: make_watch(p, tape, a, SPEED) for p, a in WATCHES.items()}
    watches.update({a: make_watch(p, tape, a, SPEED) for a, p in extra.items()})
    with PrivateBus() as bus, VirtualBluetooth(bus.address, temporary_timeout_s=3.0, connect_timeout_s=0.5) as vb:
        for address, watch in watches.items():
            vb.call(lambda a, w=watch, stale=address == STALE: a.add(w, stale_connection=stale))
        vb.call(lambda a: a.add(FitnessBand(BAND)))
        yield Bluetooth(bus.address, vb, watches)


@dataclass
class Models:
    tiny: Path  # acc + gyro
    acc_export: subprocess.Popen  # the accelerometer-only program being exported beside it

    def with_acc_only(self) -> Path:
        """`tiny`, once the accelerometer-only program is there too (for the watches without gyroscope)."""
        self.acc_export.wait(timeout=600)
        log = (self.tiny.parent / "tiny-acc.log").read_text()
        assert self.acc_export.returncode == 0, log[-2000:]
        return self.tiny


@pytest.fixture(scope="session")
def acc_program(tmp_path_factory: pytest.TempPathFactory, wisdm_root: Path):
    """A tiny accelerometer-only program, exported in the background from the start (an export takes a while;
    only the last test here, with watches that have no gyroscope, needs it)."""
    folder = tmp_path_factory.mktemp("ble-models")
    proc = export(tiny_acc_checkpoint(folder, wisdm_root), folder / "tiny-acc.pte")
    yield folder, proc
    if proc.poll() is None:  # not needed after all (tests deselected)
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def model(acc_program: tuple[Path, subprocess.Popen], tiny_program: Path) -> Models:
    """The tiny acc+gyro program, in the folder where the accelerometer-only one is being exported."""
    folder, proc = acc_program
    shutil.copy(tiny_program, folder / "tiny.pte")
    shutil.copy(tiny_program.with_suffix(".json"), folder / "tiny.json")
    return Models(folder / "tiny.pte", proc)


@dataclass
class Collected:
    """Decisions per watch address, each with the time it arrived."""

    topics: dict[str, str]
    got: dict[str, list[tuple[float, dict]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.got = {a: [] for a in self.topics}

    def pump(self, sub: Subscriber, until: Callable[[], bool], agent: AgentProcess, timeout: float) -> None:
        by_topic = {t: a for a, t in self.topics.items()}
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            try:
                topic, payload, retained = sub.messages.get(timeout=0.3)
            except queue.Empty:
                if agent.proc.poll() is not None:
                    break
                continue
            if topic in by_topic and not retained:
                self.got[by_topic[topic]].append((time.time(), json.loads(payload)))
        assert until(), f"decisions so far: { {a: len(v) for a, v in self.got.items()} }; agent log:\n" + \
            "\n".join(agent.lines[-40:])

    def since(self, address: str, t: float) -> list[dict]:
        return [d for at, d in self.got[address] if at >= t]


def agent_args(*addresses: str, model: Path, mqtt: str, agent_id: str, budget: float) -> list[str]:
    watch_args = [x for a in addresses for x in ("--watch", a)]
    return [*watch_args, "--mqtt", mqtt, "--model", str(model), "--agent-id", agent_id,
            "--scan-timeout", "5", "--retry-budget", f"{budget:g}", "--decision-period", f"{PERIOD:g}"]


def cli(bus: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus})


def test_unknown_address_is_a_one_line_error(bluetooth: Bluetooth, model: Models, mosquitto) -> None:  # noqa: ANN001
    # With a retry budget, the old give-up behaviour (without one, the agent looks for it until it appears).
    proc = cli(bluetooth.address, "run", "--watch", UNKNOWN, "--mqtt", mosquitto.url, "--model", str(model.tiny),
               "--scan-timeout", "1", "--retry-budget", "5")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: {UNKNOWN}: no such watch found within 1 s of scanning; is it on, in range and not "
                    f"connected to another device?")


def test_scan_lists_nearby_watches_with_rssi_and_protocol(bluetooth: Bluetooth) -> None:
    proc = cli(bluetooth.address, "scan", "--timeout", "1")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:-1]}
    assert STALE not in rows  # BlueZ holds a connection to it, so it does not advertise
    for protocol, address in WATCHES.items():
        if address == STALE:
            continue
        assert address in rows, proc.stdout
        _, rssi, dbm, shown, *name = rows[address].split()
        assert dbm == "dBm" and -70 < int(rssi) < -40 and shown == protocol
        assert " ".join(name) == bluetooth.watches[address].name
    assert rows[BAND].split()[3] == "-"  # advertises a battery service only


def test_record_writes_a_labelled_session_that_replay_classifies(bluetooth: Bluetooth, tape: MotionTape,
                                                                 tmp_path: Path, tiny_program: Path) -> None:
    from l2mu.agent.daemon import Agent, NullSink
    from l2mu.agent.recording import read_recording
    from l2mu.agent.runtime import ExecuTorchClassifier
    from l2mu.agent.sources import parse_source

    out = tmp_path / "mine.csv.gz"
    proc = cli(bluetooth.address, "record", "--watch", RECORDER, "--label", "typing", "--out", str(out),
               "--seconds", "3", "--protocol", "l2mu", "--scan-timeout", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: ") and "acc+gyro" in proc.stdout
    samples = read_recording(out)
    assert {s.label for s in samples} == {"typing"} and {s.sensor for s in samples} == {"acc", "gyro"}
    acc = [s for s in samples if s.sensor == "acc"]
    t = np.array([s.t for s in acc])
    assert np.allclose(np.diff(t), 1 / 25, atol=2e-3)  # the watch's own 25 Hz clock
    assert 8 < t[-1] - t[0] < 20  # 3 s at 4× speed
    # The watch's clock is kept, so the file holds exactly the motion the watch sent (int16 at ±8 g).
    expected, _ = tape.at(t)
    assert np.abs(np.array([s.xyz for s in acc]) - expected).max() < 0.01
    # `replay:` plays it through the agent, and every window is labelled with what was recorded.
    source = parse_source(f"replay:{out}", 0)
    agent = Agent([source], ExecuTorchClassifier(tiny_program), NullSink(), decision_period_s=PERIOD)
    asyncio.run(agent.run())
    session = agent.sessions[0]
    assert session.seq >= 16 and session.labelled == session.seq  # ~12 s of watch clock, a decision every 0.5 s


BAD_OPTIONS = [
    (("run", "--watch", "C0:FF:EE:00:01"), "malformed address; expected a Bluetooth address like AA:BB:CC:DD:EE:FF"),
    (("run", "--watch", DROP, "--protocol", "garmin"), "--protocol 'garmin': expected one of auto, bangle,"),
    (("run", "--watch", DROP, "--watch", STAY, "--protocol", "l2mu", "--protocol", "l2mu", "--protocol", "polar"),
     "--protocol given 3 times for 2 Bluetooth watch(es)"),
    (("record", "--watch", "demo", "--label", "typing", "--out", "x.csv"), "record needs a Bluetooth address"),
]


def test_bad_watch_options_are_one_line_errors(bluetooth: Bluetooth) -> None:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bluetooth.address}
    # All at once: each is a process start and one line, nothing more.
    procs = [subprocess.Popen([*cli_command(), *args, *(("--mqtt", "mqtt://127.0.0.1:1") if args[0] == "run" else ())],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for args, _ in BAD_OPTIONS]
    for proc, (args, message) in zip(procs, BAD_OPTIONS, strict=True):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err)
        assert err.strip().splitlines() == [err.strip()] and message in err, (args, err)


def first_error(bus: str, address: str, protocol: str) -> str:
    """Streams from a BleSource in this process until it fails; returns the error."""

    async def run() -> str:
        source = BleSource(address, protocol, BleOptions(scan_timeout_s=3, retry_budget_s=3))
        try:
            async for _ in source.stream():
                pass
        except BleError as exc:
            return str(exc)
        raise AssertionError("the stream ended without an error")

    assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == bus  # bleak finds the system bus there
    return asyncio.run(asyncio.wait_for(run(), 30))


def test_a_device_without_the_needed_service_is_refused(bluetooth: Bluetooth,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluetooth.address)
    message = first_error(bluetooth.address, BAND, "auto")
    assert message.startswith(f"{BAND} (Fitness Band) offers no service of a watch protocol this agent speaks")
    assert "0000180f-0000-1000-8000-00805f9b34fb" in message
    message = first_error(bluetooth.address, BAND, "polar")
    assert message.startswith(f"{BAND} (Fitness Band) lacks the polar service fb005c80-")
    assert not bluetooth.control(lambda a: a.is_connected(BAND))  # it hung up after refusing


def test_virtual_watch_command_serves_watches_for_a_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import signal

    from l2mu.agent.ble import scan

    proc = subprocess.Popen([*cli_command(), "virtual-watch", "--protocol", "bangle", "--protocol", "polar"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        printed = [proc.stdout.readline() for _ in range(5)]
        address = re.search(r"export DBUS_SYSTEM_BUS_ADDRESS='([^']+)'", "".join(printed))
        assert address, printed
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address.group(1))
        found = {r.address: r.protocol for r in asyncio.run(scan(1.0))}
        assert found == {DEFAULT_ADDRESSES["bangle"]: "bangle", DEFAULT_ADDRESSES["polar"]: "polar"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    socket_path = address.group(1).removeprefix("unix:path=").split(",")[0]
    assert not Path(socket_path).exists()  # its private bus went with it


def test_acquire_notify_hands_notifications_over_a_socket(bluetooth: Bluetooth,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """bleak's other way to receive notifications: a file descriptor per characteristic instead of signals."""
    from bleak import BleakClient, BleakScanner

    from l2mu.firmware_bridge.l2mu_profile import L2MU_CONTROL_CHAR, L2MU_IMU_CHAR, decode_packet, encode_start

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluetooth.address)

    async def run() -> tuple[list[bytes], bool, bool]:
        device = await BleakScanner.find_device_by_address(ACQUIRE, timeout=5)
        assert device is not None
        async with BleakClient(device) as client:
            char = client.services.get_characteristic(L2MU_IMU_CHAR)
            got: list[bytes] = []
            await client.start_notify(char, lambda _c, data: got.append(bytes(data)), bluez={"use_start_notify": False})
            await client.write_gatt_char(L2MU_CONTROL_CHAR, encode_start(25, 4), response=True)
            while len(got) < 6:
                await asyncio.sleep(0.02)
            acquired = char.obj[1]["NotifyAcquired"] and not char.obj[1]["Notifying"]
            await client.stop_notify(char)  # closes the socket; BlueZ notices the hang-up
            for _ in range(100):
                if not char.obj[1]["NotifyAcquired"]:
                    break
                await asyncio.sleep(0.02)
            return got, acquired, char.obj[1]["NotifyAcquired"]

    packets, acquired, still_acquired = asyncio.run(asyncio.wait_for(run(), 30))
    assert acquired and not still_acquired
    batches = [decode_packet(p) for p in packets]
    assert [b.seq for b in batches] == list(range(batches[0].seq, batches[0].seq + len(batches)))
    assert all(len(b.acc) == 4 and b.gyro is not None and b.rate_chz == 2500 for b in batches)


def test_a_watch_that_is_connecting_does_not_count_as_stalled(tiny_program: Path) -> None:
    """The systemd watchdog must not restart the agent (and every other watch) while one watch reconnects."""
    from l2mu.agent.daemon import Agent, NullSink
    from l2mu.agent.runtime import ExecuTorchClassifier

    source = BleSource(DROP, "auto", BleOptions(retry_budget_s=300))
    agent = Agent([source], ExecuTorchClassifier(tiny_program), NullSink(), stall_after_s=30)
    agent.sessions[0].last_progress = time.monotonic() - 60
    assert not agent.healthy()
    source.connecting = True
    assert agent.healthy()


@dataclass
class FaultRun:
    collected: Collected
    dropped_at: float
    back_at: float
    gave_up_at: float
    gave_up_line: str
    returncode: int
    log: list[str]


@pytest.fixture(scope="module")
def fault_run(bluetooth: Bluetooth, model: Models, mosquitto) -> FaultRun:  # noqa: ANN001
    sub = Subscriber(mosquitto.port, "har/activity/#")
    collected = Collected({a: f"har/activity/{topic_safe(a)}" for a in (DROP, VANISH, STAY)})
    agent = AgentProcess(bluetooth.address, *agent_args(DROP, VANISH, STAY, model=model.tiny, mqtt=mosquitto.url,
                                                        agent_id="ble-faults", budget=3))
    try:
        collected.pump(sub, lambda: all(len(v) >= 2 for v in collected.got.values()), agent, timeout=120)
        dropped_at = time.time()
        bluetooth.control(lambda a: a.set_in_range(DROP, False))  # drops the link; reconnecting fails for now
        bluetooth.control(lambda a: a.set_in_range(VANISH, False))  # and this one never comes back
        time.sleep(1.5)
        back_at = time.time()
        bluetooth.control(lambda a: a.set_in_range(DROP, True))
        line = agent.wait_for_line(f"watch {topic_safe(VANISH)} stopped", timeout=30)
        gave_up_at = time.time()
        collected.pump(sub, lambda: len(collected.since(DROP, back_at)) >= 3
                       and len(collected.since(STAY, gave_up_at)) >= 3, agent, timeout=60)
    finally:
        rc = agent.stop()
        sub.close()
    return FaultRun(collected, dropped_at, back_at, gave_up_at, line, rc, agent.lines)


def test_link_loss_reconnects_and_both_sides_of_the_outage_are_classified(fault_run: FaultRun,
                                                                        bluetooth: Bluetooth) -> None:
    published = [d for _, d in fault_run.collected.got[DROP]]
    before = [d for at, d in fault_run.collected.got[DROP] if at < fault_run.dropped_at]
    after = fault_run.collected.since(DROP, fault_run.back_at)
    assert len(before) >= 2 and len(after) >= 3
    assert [d["seq"] for d in published] == list(range(len(published)))
    # The outage (≥ 1.5 s, 6 s of watch clock) shows as one jump in window times, and no window spans it.
    steps = [b["window_end"] - a["window_end"] for a, b in zip(published, published[1:], strict=False)]
    k = int(np.argmax(steps))
    assert steps[k] > 4.0
    assert published[k + 1]["window_start"] > published[k]["window_end"] + 4.0
    assert all(abs(s - PERIOD) < 0.05 for i, s in enumerate(steps) if i != k)
    events = bluetooth.events(DROP)
    lost = events.index(("Disconnected", "link loss"))
    assert [m for m, _ in events[lost:]].count("Connect") >= 2  # failed while away, then connected again
    assert any(f"{DROP}: link lost; reconnecting" in line for line in fault_run.log)
    assert any(f"{DROP}: connected again" in line for line in fault_run.log)


def test_watch_gone_beyond_the_retry_budget_fails_alone(fault_run: FaultRun) -> None:
    assert f"{VANISH}: gave up after 3 s of reconnecting" in fault_run.gave_up_line
    assert [line for line in fault_run.log if line.startswith("ERROR")] == [fault_run.gave_up_line]
    assert not fault_run.collected.since(VANISH, fault_run.gave_up_at + 0.5)
    assert len(fault_run.collected.since(STAY, fault_run.gave_up_at)) >= 3  # the others go on
    stay = [d for _, d in fault_run.collected.got[STAY]]
    assert [d["seq"] for d in stay] == list(range(len(stay)))
    assert fault_run.returncode == 0  # stopped by SIGINT, not by the failure


@dataclass
class ProtocolRun:
    collected: Collected
    returncode: int
    log: list[str]


@pytest.fixture(scope="module")
def protocol_run(bluetooth: Bluetooth, model: Models, mosquitto) -> ProtocolRun:  # noqa: ANN001
    sub = Subscriber(mosquitto.port, "har/activity/#")
    collected = Collected({a: f"har/activity/{topic_safe(a)}" for a in WATCHES.values()})
    agent = AgentProcess(bluetooth.address, *agent_args(*WATCHES.values(), model=model.with_acc_only(),
                                                        mqtt=mosquitto.url, agent_id="ble-protocols", budget=10))
    try:
        collected.pump(sub, lambda: all(len(v) >= 3 for v in collected.got.values()), agent, timeout=120)
    finally:
        rc = agent.stop()
        sub.close()
    return ProtocolRun(collected, rc, agent.lines)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_protocol_is_found_connected_streamed_and_classified(protocol: str, protocol_run: ProtocolRun,
                                                                  bluetooth: Bluetooth) -> None:
    address = WATCHES[protocol]
    published = [d for _, d in protocol_run.collected.got[address]]
    assert len(published) >= 3
    for d in published:
        jsonschema.validate(d, SCHEMA)
        assert d["watch"] == topic_safe(address)
        # A watch without gyroscope gets the accelerometer-only model found beside the configured one.
        assert d["model"] == ("tiny-acc-test" if protocol in ACC_ONLY else "tiny-test")
    assert [d["seq"] for d in published] == list(range(len(published)))
    sensors = "acc" if protocol in ACC_ONLY else "acc+gyro"
    assert any(f"{address} ({bluetooth.watches[address].name}): streaming {sensors} over {protocol}" in line
               for line in protocol_run.log)
    # It was discovered by scanning (BlueZ knew no device before), and stopped cleanly on SIGINT.
    assert ("StartDiscovery", "") in [(m, a) for m, a, _ in bluetooth.control(lambda a: list(a.events))]
    assert bluetooth.watches[address].notifications_sent > 10
    assert protocol_run.returncode == 0, "\n".join(protocol_run.log[-20:])
    assert any(line.startswith(f"{topic_safe(address)}: ") and "decisions" in line for line in protocol_run.log)


def test_stale_connection_is_closed_before_connecting(protocol_run: ProtocolRun, bluetooth: Bluetooth) -> None:
    events = bluetooth.events(STALE)
    members = [m for m, _ in events]
    assert members.index("Disconnect") < members.index("Connect")
    assert events[members.index("Disconnect") + 1] == ("Disconnected", "local")
    assert protocol_run.collected.got[STALE]


def test_disconnect_during_an_aborted_connect_still_answers_the_connect(bluetooth: Bluetooth) -> None:
    """A client that gives up on a Connect whose link BlueZ is about to abort must get its reply, not hang."""
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    path = "/org/bluez/hci0/dev_" + BAND.replace(":", "_")

    def call(bus: MessageBus, member: str):  # noqa: ANN202
        return bus.call(Message(destination="org.bluez", path=path, interface="org.bluez.Device1", member=member))

    async def connect_then_disconnect() -> Message:
        bus = await MessageBus(bus_address=bluetooth.address, bus_type=BusType.SYSTEM).connect()
        try:
            # BlueZ exports a device once a discovery has seen it advertise.
            await bus.call(Message(destination="org.bluez", path="/org/bluez/hci0", interface="org.bluez.Adapter1",
                                   member="StartDiscovery"))
            await asyncio.sleep(1.0)
            connect = asyncio.ensure_future(call(bus, "Connect"))
            await asyncio.sleep(0.3)
            assert not connect.done(), connect.result().body
            await call(bus, "Disconnect")
            return await asyncio.wait_for(connect, 5.0)
        finally:
            bus.disconnect()

    latency = bluetooth.control(lambda a: a.connect_latency_s)
    bluetooth.control(lambda a: setattr(a, "connect_latency_s", 2.0))
    bluetooth.control(lambda a: a.fail_connect(BAND, "org.bluez.Error.Failed", "le-connection-abort-by-local"))
    try:
        reply = asyncio.run(connect_then_disconnect())
    finally:
        bluetooth.control(lambda a: setattr(a, "connect_latency_s", latency))
    assert reply.message_type == MessageType.ERROR
    assert (reply.error_name, reply.body) == ("org.bluez.Error.Failed", ["Cancelled"])
