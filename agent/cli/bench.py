"""`l2mu-agent bench`: runtime benchmarks that print one JSON object (never timed assertions in tests).

`bench [--model NAME]` compares eager / ExecuTorch (Python bindings and the agent's native runner) / ONNX
Runtime on one model;
`bench load --watches N ...` measures the whole agent under N virtual watches.
Implementations live in l2mu.export.bench and l2mu.agent.bench.load; this file only wires options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from l2mu.agent.cli.app import SubjectsOpt, app, one_line_errors, parse_subjects
from l2mu.agent.settings import DEFAULTS

bench_app = typer.Typer(
    help="Benchmarks: model runtimes (default) or the agent under load (`bench load`). Prints one JSON object.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(bench_app, name="bench")


def save(result: dict, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


def emit(result: dict, out: Path | None) -> None:
    save(result, out)
    typer.echo(json.dumps(result, indent=2))


@bench_app.callback()
def runtimes(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Bundled model name or path to its fp32 .pte.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON object to this file.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed windows; steps are 10× as many.")] = 500,
    checkpoint: Annotated[Path | None, typer.Option(help="Eager checkpoint (default: NAME.pt beside).")] = None,
) -> None:
    """Eager snnTorch vs ExecuTorch (its Python bindings, and the agent's native runner) vs ONNX Runtime on one
    model: window and step latency (median, p99), batched steps, file bytes and the resident memory of a process
    that loads only that runtime."""
    if ctx.invoked_subcommand is not None:
        return
    from l2mu.export.bench import BenchError, run_model_bench
    from l2mu.model.metadata import ModelFileError
    from l2mu.model.wisdm import DatasetError

    def log(line: str) -> None:
        typer.echo(line, err=True)

    try:
        result = run_model_bench(model, repeats, checkpoint, log=log)
    except (BenchError, ModelFileError, DatasetError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        emit(result, out)
        return
    save(result, out)
    typer.echo(f"{result['model']}, {result['threads']} thread, {result['repeats']['windows']} windows / "
               f"{result['repeats']['steps']} steps")
    typer.echo(f"{'runtime':<17} {'window ms':>9} {'p99':>8} {'step us':>8} {'p99':>8} {'bytes':>9} {'RSS MB':>7}")
    for name, r in result["runtimes"].items():
        typer.echo(f"{name:<17} {r['window_ms_median']:>9.3f} {r['window_ms_p99']:>8.3f} {r['step_us_median']:>8.1f} "
                   f"{r['step_us_p99']:>8.1f} {r['file_bytes']:>9} {r['rss_mb']:>7.1f}")
    batched = result["runtimes"]["executorch_native"]["batched_step_us_per_chain"]
    typer.echo("executorch_native batched step, µs per chain: "
               + ", ".join(f"B={b} {v['median']:.2f}" for b, v in batched.items()))


@bench_app.command("load")
def load(
    watches: Annotated[
        list[str], typer.Option(help="Numbers of watches, comma-separated or repeated: --watches 1,8,32,64.")
    ],
    seconds: Annotated[float, typer.Option(min=5, help="Seconds each count streams (p99 wants ≥ 60).")] = 60.0,
    model: Annotated[str | None, typer.Option(help="Bundled model name or path to a .pte.")] = None,
    mix: Annotated[
        str | None, typer.Option(help="Watch kinds the watches cycle through, e.g. polar@52,metawear@25,l2mu@20 "
                                      "(default: every kind that streams the model's sensors).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Where in the recording each watch starts, and when.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON object to this file.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of latency and CPU against the watch count.")]
    = None,
) -> None:
    """The whole agent fed by N virtual watches (real WISDM data as each protocol's bytes) publishing to a local
    mosquitto: sample → PUBACK latency, CPU, RSS, dropped samples and decisions for each N."""
    from l2mu.agent.bench.load import LoadBenchError, parse_counts, run_load_bench
    from l2mu.agent.bench.load import plot as draw
    from l2mu.agent.broker import BrokerError
    from l2mu.agent.runtime import resolve_model
    from l2mu.agent.sim.player import DEFAULT_MIX, WatchSpecError, mix_for
    from l2mu.model.metadata import ModelFileError, read_metadata

    try:
        counts = parse_counts(watches)
        kinds = [k for k in (mix or "").split(",") if k.strip()]
        mix_for(read_metadata(resolve_model(model)).sensors, kinds or DEFAULT_MIX)  # a bad option fails at once
        result = run_load_bench(counts, seconds, model, kinds, seed, progress=not as_json)
    except (LoadBenchError, WatchSpecError, ModelFileError, BrokerError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if plot is not None:
        draw(result, plot)
    if as_json:
        emit(result, out)
        return
    save(result, out)
    typer.echo(f"{'watches':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU %':>6} {'RSS MB':>7} {'dropped':>7} "
               f"{'decisions':>9} {'lost':>4}")
    for r in result["results"]:
        typer.echo(f"{r['watches']:>7} {r['latency_ms_p50']:>7} {r['latency_ms_p99']:>7} {r['cpu_percent']:>6} "
                   f"{r['rss_mb']:>7} {r['samples_dropped']:>7} {r['decisions']:>9} {r['decisions_lost']:>4}")


@app.command("stream-accuracy")
@one_line_errors
def stream_accuracy(
    data: Annotated[Path, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")],
    model: Annotated[str | None, typer.Option(help="Bundled model name or path to a .pte.")] = None,
    subjects: SubjectsOpt = None,
    smoothing_window: Annotated[int, typer.Option(help="N for majority and hmm smoothing.", min=1)] \
        = DEFAULTS.smoothing_window,
    activities: Annotated[str, typer.Option(help="Activity codes in playing order.")] = "FGOPQRS",
    seconds: Annotated[float, typer.Option(help="Seconds of each activity.", min=5)] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per subject.")] = False,
) -> None:
    """Replay held-out WISDM subjects through the agent: window vs stream accuracy for each smoothing."""
    from l2mu.agent.bench.stream_accuracy import measure_wisdm_subject
    from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
    from l2mu.agent.smoothing import SMOOTHING_KINDS
    from l2mu.model.splits import TEST_SUBJECTS
    from l2mu.model.wisdm import watch_dir

    watch_dir(data)
    clf = ExecuTorchClassifier(resolve_model(model))
    kinds = ["none", *[k for k in SMOOTHING_KINDS if k != "none"]]
    for subject in parse_subjects(subjects) or list(TEST_SUBJECTS):
        report = measure_wisdm_subject(data, subject, clf, kinds, smoothing_window, activities.replace(",", ""),
                                       seconds)
        if as_json:
            typer.echo(json.dumps(report))
            continue
        typer.echo(f"subject {subject}, model {report['model']}, {report['activities']} × {seconds:g} s:")
        for r in report["results"]:
            typer.echo(f"  {r['smoothing']:<8} window acc {r['window_accuracy']:.3f} "
                       f"(raw {r['window_accuracy_raw']:.3f})  stream acc {r['stream_accuracy']:.3f} "
                       f"(raw {r['stream_accuracy_raw']:.3f})"
                       f"  changes {r['changes']} (raw {r['changes_raw']})  {r['decisions']} decisions")
