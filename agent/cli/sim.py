"""`l2mu-agent virtual-watch`: virtual watches on a virtual BlueZ, for demos without hardware."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from l2mu.agent.cli.app import app, one_line_errors
from l2mu.agent.errors import UsageError


@app.command("virtual-watch")
@one_line_errors
def virtual_watch(
    protocol: Annotated[list[str] | None, typer.Option(
        help="Watch families to offer (repeatable; default: polar, infinitime, metawear, bangle, l2mu).")] = None,
    recording: Annotated[Path | None, typer.Option(help="Motion to stream: a recording (`replay:` format). "
                                                        "Default: the bundled demo, a real WISDM wearer.")] = None,
    data: Annotated[Path | None, typer.Option(help="Or a WISDM-2019 directory, with --subject.")] = None,
    subject: Annotated[int | None, typer.Option(help="WISDM subject to stream (with --data).")] = None,
    speed: Annotated[float, typer.Option(help="Watch clock speed factor (1 = real time).", min=0.01)] = 1.0,
    gyro: Annotated[bool, typer.Option(help="Offer the gyroscope where the family has one.")] = True,
    bus: Annotated[str | None, typer.Option(help="D-Bus address to serve org.bluez on. Default: start a "
                                                 "private dbus-daemon.")] = None,
) -> None:
    """Virtual watches on a virtual BlueZ adapter, streaming real recorded motion — demos without hardware."""
    from l2mu.agent.recording import recording_from_wisdm
    from l2mu.agent.sim.dbus_daemon import PrivateBus
    from l2mu.agent.sim.watches import PROTOCOLS, MotionTape, make_watch
    from l2mu.agent.sources import demo_recording

    chosen = protocol or list(PROTOCOLS)
    unknown = [p for p in chosen if p not in PROTOCOLS]
    if unknown:
        raise UsageError(f"--protocol {unknown[0]!r}: expected one of {', '.join(PROTOCOLS)}")
    if (data is None) != (subject is None):
        raise UsageError("--data and --subject go together")
    if recording is not None and data is not None:
        raise UsageError("give --recording or --data/--subject, not both")
    if data is not None and subject is not None:
        tape = MotionTape(recording_from_wisdm(data, subject, "FGOPQRS", 60.0))
    else:
        tape = MotionTape.from_file(recording or demo_recording())
    watches = [make_watch(p, tape, speed=speed, gyro=None if gyro else False) for p in chosen]
    private = None
    if bus is None:
        private = PrivateBus().start()
        bus = private.address

    def ready() -> None:  # only once org.bluez answers, so whoever reads this can use it at once
        typer.echo(f"virtual BlueZ adapter hci0 on {bus}")
        for w in watches:
            sensors = "acc+gyro" if getattr(w, "has_gyro", False) else "acc"
            typer.echo(f"  {w.address}  {w.protocol:<10}  {sensors:<8}  {w.name}")
        typer.echo(f"In another shell:\n  export DBUS_SYSTEM_BUS_ADDRESS='{bus}'\n"
                   f"  l2mu-agent scan\n  l2mu-agent run --watch {watches[0].address}\nCtrl-C stops.")
        sys.stdout.flush()

    try:
        asyncio.run(_serve_virtual(bus, watches, ready))
    finally:
        if private is not None:
            private.stop()


async def _serve_virtual(bus_address: str, watches: list[Any], ready: Callable[[], None]) -> None:
    from dbus_fast.aio import MessageBus

    from l2mu.agent.sim.bluez import VirtualAdapter

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = await MessageBus(bus_address=bus_address, negotiate_unix_fd=True).connect()
    adapter = VirtualAdapter(bus)
    await adapter.start()
    for w in watches:
        adapter.add(w)
    ready()
    try:
        await stop.wait()
    finally:
        await adapter.close()
        bus.disconnect()
