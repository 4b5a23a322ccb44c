"""`l2mu-agent scan` and `record`: the Bluetooth commands besides `run`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from l2mu.agent.cli.app import app, one_line_errors
from l2mu.agent.errors import UsageError
from l2mu.agent.settings import DEFAULTS

ProtocolOpt = Annotated[str, typer.Option(help="auto (from the watch's services), polar, infinitime, metawear, bangle "
                                               "or l2mu.")]
ScanTimeoutOpt = Annotated[float, typer.Option(help="Seconds to scan for a watch BlueZ has not seen yet.", min=0.1)]
RetryBudgetOpt = Annotated[float | None, typer.Option(
    help="Give up on a watch absent at start, or away after a link loss, for this many seconds. Default: never "
         "(it is looked for with backoff until it returns).", min=0.1)]


def ble_options(scan_timeout: float, retry_budget: float | None) -> Any:
    from l2mu.agent.ble import BleOptions

    return BleOptions(scan_timeout_s=scan_timeout, retry_budget_s=retry_budget)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


async def record_session(source: Any, label: str, seconds: float) -> tuple[list[Any], str]:
    """Samples of `seconds` of streaming (from the first connection on), or until SIGINT/SIGTERM."""
    from l2mu.agent.events import Sample, WatchConnected

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    samples: list[Sample] = []
    protocol = ""
    deadline: float | None = None
    stream = source.stream()
    waiter = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            step = asyncio.ensure_future(anext(stream))
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait({step, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if step not in done:
                step.cancel()  # ends the stream: it disconnects the watch on its way out
                await asyncio.gather(step, return_exceptions=True)
                break
            try:
                item = step.result()
            except StopAsyncIteration:
                break
            if isinstance(item, WatchConnected):
                protocol = item.protocol
                if deadline is None:
                    deadline = time.monotonic() + seconds
            elif isinstance(item, Sample):
                samples.append(Sample(item.t, item.sensor, item.xyz, label))
    finally:
        waiter.cancel()
        await stream.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return samples, protocol



@app.command()
@one_line_errors
def scan(
    timeout: Annotated[float, typer.Option(help="Seconds to listen for advertisements.", min=0.1)] = 5.0,
    adapter: Annotated[str | None, typer.Option(help="Bluetooth adapter (hci0, …); default: BlueZ's.")] = None,
) -> None:
    """Nearby Bluetooth LE devices, strongest first, with the watch protocol each one is recognised as."""
    from l2mu.agent.ble import BleOptions
    from l2mu.agent.ble import scan as run_scan

    results = asyncio.run(run_scan(timeout, BleOptions(adapter=adapter)))
    if not results:
        typer.echo(f"no Bluetooth LE device advertised within {timeout:g} s")
        return
    typer.echo(f"{'address':<17}  {'RSSI':>8}  {'protocol':<10}  name")
    for r in results:
        typer.echo(f"{r.address:<17}  {r.rssi:>4} dBm  {r.protocol or '-':<10}  {r.name or '(no name)'}")
    known = sum(r.protocol is not None for r in results)
    typer.echo(f"{len(results)} device(s), {known} recognised watch(es); use one with "
               f"`l2mu-agent run --watch ADDRESS`")

@app.command()
@one_line_errors
def record(
    watch: Annotated[str, typer.Option(help="The watch's Bluetooth address, AA:BB:CC:DD:EE:FF.")],
    label: Annotated[str, typer.Option(help="The activity performed while recording (e.g. typing).")],
    out: Annotated[Path, typer.Option(help="Recording to write (.csv or .csv.gz), as `run --watch replay:` "
                                           "reads it.")],
    seconds: Annotated[float, typer.Option(help="How long to record once streaming (Ctrl-C ends earlier).",
                                           min=0.1)] = 60.0,
    protocol: ProtocolOpt = "auto",
    scan_timeout: ScanTimeoutOpt = DEFAULTS.scan_timeout,
    retry_budget: RetryBudgetOpt = DEFAULTS.retry_budget,
) -> None:
    """Record a labelled session from a live watch, for collecting your own training data."""
    from l2mu.agent.ble import BleError
    from l2mu.agent.recording import write_recording
    from l2mu.agent.sources import SourceError, parse_source

    if not label.strip() or any(c in label for c in "\r\n"):
        raise UsageError("--label must be a non-empty single line")
    if not out.name.endswith((".csv", ".csv.gz")):
        raise UsageError(f"--out {out}: a recording ends in .csv or .csv.gz")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    source = parse_source(watch, 1.0, protocol, ble_options(scan_timeout, retry_budget))
    if not hasattr(source, "address"):
        raise SourceError(f"--watch {watch!r}: record needs a Bluetooth address like AA:BB:CC:DD:EE:FF")
    _logging()
    samples, used = asyncio.run(record_session(source, label.strip(), seconds))
    if not samples:
        raise BleError(f"{source.address}: no samples arrived; nothing written")
    n = write_recording(out, samples)  # on the watch's own clock, as the format says
    sensors = "+".join(sorted({s.sensor for s in samples}))
    span = samples[-1].t - samples[0].t
    typer.echo(f"wrote {out}: {n} samples ({sensors}, {span:.1f} s of {used or 'watch'} data, "
               f"label {label.strip()!r})")
