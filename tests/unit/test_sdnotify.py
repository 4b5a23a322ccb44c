"""Running under systemd: the notify protocol (READY, STATUS, WATCHDOG, STOPPING) over a real datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

from l2mu.agent.daemon import Agent
from l2mu.agent.events import Sample
from l2mu.agent.sdnotify import Notifier, socket_address, watchdog_interval
from tests.support.sdnotify import receive


def test_socket_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/42") == b"\0/org/freedesktop/systemd1/notify/42"
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_s is None
    assert notifier.ready("x") is False and notifier.notify("WATCHDOG=1") is False


def test_watchdog_interval_is_for_this_process_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_path_socket_gets_one_datagram_per_call(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("running")
    assert notifier.stopping()
    notifier.close()
    got = [lines for _, lines in receive(sock, 0.5)]
    assert got == [["READY=1", "STATUS=running"], ["STOPPING=1", "STATUS=stopping"]]


def test_reload_says_reloading_with_its_monotonic_time(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading model")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.close()
    [(_, lines)] = receive(sock, 0.5)
    assert lines[0] == "RELOADING=1" and lines[2] == "STATUS=reloading model"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after


def test_abstract_socket() -> None:
    name = f"l2mu-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.notify("WATCHDOG=1")
        notifier.close()
        assert [lines for _, lines in receive(sock, 0.5)] == [["WATCHDOG=1"]]


def test_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.notify("READY=1") is False


class StallingSource:
    """Delivers samples for `live_s` seconds, then hangs forever like a wedged watch connection."""

    watch_id = "stall"
    sensors = {"acc", "gyro"}
    speed = 1.0
    sensors_known = True
    connecting = False

    def __init__(self, live_s: float) -> None:
        self.live_s = live_s

    async def stream(self) -> AsyncIterator[Sample]:
        end = time.monotonic() + self.live_s
        t = 0.0
        while time.monotonic() < end:
            yield Sample(t, "acc", (0.0, 0.0, 9.8), "")
            t += 0.05
            await asyncio.sleep(0.02)
        await asyncio.Event().wait()
        yield Sample(t, "acc", (0.0, 0.0, 9.8), "")  # pragma: no cover - never reached


class PipelineFreeAgent(Agent):
    """The real main loop and watchdog, without a model: samples only count as progress."""

    def handle_sample(self, session, sample) -> list[dict]:  # noqa: ANN001
        return []


def test_stalled_pipeline_stops_pinging(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    meta = SimpleNamespace(sensors=["acc", "gyro"], sample_rate_hz=20.0, window_samples=10, classes=list("FGOPQRS"),
                           norm_mean=[0.0] * 6, norm_std=[1.0] * 6)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"})  # 0.3 s: pings every 0.15 s
    agent = PipelineFreeAgent([StallingSource(live_s=1.0)], SimpleNamespace(meta=meta), None, notifier=notifier)

    async def main() -> None:
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(2.5)
        assert not task.done()  # a stalled watch is not an ended one: the agent keeps running, unpinged
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # Collect on a thread, so each datagram's arrival time is when the agent sent it.
    got: list[tuple[float, list[str]]] = []
    collector = threading.Thread(target=lambda: got.extend(receive(sock, 3.0)))
    collector.start()
    start = time.monotonic()
    asyncio.run(main())
    notifier.close()
    collector.join()
    pings = [t - start for t, lines in got if lines == ["WATCHDOG=1"]]
    assert len(pings) >= 4 and pings[0] < 0.5  # pinging while samples flow
    # The last sample comes at 1.0 s; the stall limit is the 0.3 s interval, checked every 0.15 s.
    assert max(pings) < 1.0 + 0.3 + 0.15 + 0.2, pings
    assert any(lines[0].startswith("STATUS=stalled") for _, lines in got)


def test_ended_source_is_not_a_stall() -> None:
    meta = SimpleNamespace(sensors=["acc", "gyro"], sample_rate_hz=20.0, window_samples=10, classes=list("FGOPQRS"),
                           norm_mean=[0.0] * 6, norm_std=[1.0] * 6)
    agent = PipelineFreeAgent([StallingSource(0)], SimpleNamespace(meta=meta), None, stall_after_s=1.0)
    session = agent.sessions[0]
    assert agent.healthy(now=session.last_progress + 0.5)
    assert not agent.healthy(now=session.last_progress + 1.5)
    session.last_progress = None
    assert agent.healthy(now=time.monotonic() + 100)
