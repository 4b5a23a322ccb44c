"""`l2mu-agent`: train, evaluate and export L2MU models, and run the agent."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from l2mu.agent.bench_cli import bench_app
from l2mu.agent.ble_cli import RetryBudgetOpt, ScanTimeoutOpt, ble_options
from l2mu.agent.ble_cli import register as register_ble_commands
from l2mu.agent.broker import BrokerError
from l2mu.agent.config import ConfigError
from l2mu.agent.mqtt import MqttError
from l2mu.agent.outbox import OutboxError
from l2mu.agent.recording import RecordingError
from l2mu.agent.sources import SourceError
from l2mu.model.metadata import ModelFileError
from l2mu.model.wisdm import DatasetError

app = typer.Typer(
    help="Smartwatch hand-activity recognition with a spiking L2MU network, published over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
KNOWN_ERRORS = (DatasetError, ModelFileError, RecordingError, SourceError, MqttError, BrokerError, OutboxError,
                ConfigError, ValueError)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures end the command with one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KNOWN_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_subjects(values: list[str] | None) -> list[int] | None:
    """--subjects 1600,1601 or --subjects 1600 --subjects 1601."""
    if not values:
        return None
    out = []
    for v in values:
        for part in v.replace(" ", ",").split(","):
            if part:
                try:
                    out.append(int(part))
                except ValueError:
                    raise ValueError(f"--subjects: {part!r} is not a subject number") from None
    return out


def parse_overrides(arch: str, items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs, checked against the chosen architecture's config and typed like its defaults."""
    import dataclasses

    from l2mu.model.baselines import BaselineConfig
    from l2mu.model.l2mu import L2MUConfig

    fields = {f.name: f for f in dataclasses.fields(L2MUConfig if arch == "l2mu" else BaselineConfig)}
    fixed = {"n_channels", "n_classes", "neuron", "arch"}  # set by --sensors, --classes, --neuron, --arch
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields or key in fixed:
            allowed = ", ".join(sorted(set(fields) - fixed))
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {allowed}")
        kind = type(fields[key].default)
        try:
            out[key] = kind(text)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} must be {kind.__name__}") from None
    return out


SubjectsOpt = Annotated[
    list[str] | None, typer.Option("--subjects", help="Subject ids, comma-separated or repeated.")
]


@app.command()
@one_line_errors
def train(
    data: Annotated[Path, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")],
    out: Annotated[Path, typer.Option(help="Output directory for checkpoint, report and plots.")],
    epochs: Annotated[int, typer.Option(min=1)] = 40,
    subjects: SubjectsOpt = None,
    val_subjects: Annotated[
        list[str] | None, typer.Option("--val-subjects", help="Validation subjects (default: the fixed split).")
    ] = None,
    classes: Annotated[str, typer.Option(help="hand7 or hand8 (hand7 + other).")] = "hand7",
    sensors: Annotated[str, typer.Option(help="acc-gyro or acc.")] = "acc-gyro",
    neuron: Annotated[str, typer.Option(help="leaky (LIF) or synaptic (current-based LIF).")] = "leaky",
    arch: Annotated[str, typer.Option(help="l2mu, or a non-spiking baseline: lmu, gru.")] = "l2mu",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Model hyper-parameter KEY=VALUE (e.g. hidden=128, theta=20); repeatable."),
    ] = None,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap steps per epoch (quick runs).")] = None,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without validation gain before stopping.")] = 10,
    dropout: Annotated[float, typer.Option(min=0, max=0.9, help="Spike dropout while training.")] = 0.1,
    rotate_deg: Annotated[float, typer.Option(min=0, help="Augmentation: random watch rotation within ±deg.")]
    = 30.0,
) -> None:
    """Train an L2MU on WISDM-2019 watch data, split by subject; writes checkpoint.pt, report.json, PNGs."""
    from l2mu.model.train import CLASS_SETS, SENSOR_SETS, TrainConfig
    from l2mu.model.train import train as run_training

    if classes not in CLASS_SETS:
        raise ValueError(f"--classes must be one of {', '.join(CLASS_SETS)}")
    if sensors not in SENSOR_SETS:
        raise ValueError(f"--sensors must be one of {', '.join(SENSOR_SETS)}")
    if neuron not in ("leaky", "synaptic"):
        raise ValueError("--neuron must be leaky or synaptic")
    if arch not in ("l2mu", "lmu", "gru"):
        raise ValueError("--arch must be l2mu, lmu or gru")
    model_overrides = {"dropout": dropout, **parse_overrides(arch, overrides or [])}
    cfg = TrainConfig(
        data=data, out=out, classes=classes, sensors=sensors, neuron=neuron, epochs=epochs, seed=seed,
        batch_size=batch_size, subjects=parse_subjects(subjects), val_subjects=parse_subjects(val_subjects),
        max_steps_per_epoch=max_steps_per_epoch, patience=patience, rotate_deg=rotate_deg, arch=arch,
        model=model_overrides,
    )
    report = run_training(cfg, progress=sys.stderr.isatty())
    val = report["validation"]
    typer.echo(
        f"best epoch {report['best_epoch']}: validation accuracy {val.get('accuracy', float('nan')):.3f}, "
        f"macro-F1 {val.get('macro_f1', float('nan')):.3f} on subjects {report['subjects']['validation_subjects']}"
        f" ({report['seconds']} s); wrote {out / 'checkpoint.pt'}"
    )


@app.command()
@one_line_errors
def evaluate(
    data: Annotated[Path, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")],
    model: Annotated[str | None, typer.Option(help="Bundled model name, .pte program or .pt checkpoint.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    subjects: SubjectsOpt = None,
    hop: Annotated[
        int | None, typer.Option(min=1, help="Samples between windows (default: the window length, no overlap).")
    ] = None,
    cost: Annotated[
        bool, typer.Option(help="Also count SynOps (L2MU) or MACs (baselines) per window; needs the .pt checkpoint.")
    ] = True,
) -> None:
    """Window accuracy, macro-F1, per-class scores and confusion of a model on WISDM subjects."""
    import numpy as np

    from l2mu.model.checkpoint import load_checkpoint
    from l2mu.model.evaluate import evaluate_windows
    from l2mu.model.synops import compute_cost
    from l2mu.model.wisdm import watch_dir

    watch_dir(data)  # a wrong --data is reported before any model is loaded
    cost_fn = None
    if model and model.endswith(".pt"):
        import torch

        ckpt = load_checkpoint(Path(model))
        meta = ckpt.metadata

        def counts_fn(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return ckpt.model(torch.from_numpy(x)).numpy()
    else:
        from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model

        program = resolve_model(model)
        clf = ExecuTorchClassifier(program)
        meta = clf.meta
        # Scores come from the program; spikes can only be counted on its eager twin, when shipped beside it.
        ckpt = load_checkpoint(program.with_suffix(".pt")) if program.with_suffix(".pt").is_file() else None

        def counts_fn(x: np.ndarray) -> np.ndarray:
            return np.stack([clf.counts(w) for w in x])

    if ckpt is not None and cost:
        eager = ckpt.model

        def cost_fn(x: np.ndarray) -> dict:
            return compute_cost(eager, x)

    result = evaluate_windows(data, meta, counts_fn, parse_subjects(subjects), hop=hop, cost_fn=cost_fn)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"model {result['model']}: {result['n_windows']} windows from {result['n_subjects']} subjects")
    typer.echo(f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}")
    for name, m in result["per_class"].items():
        typer.echo(f"  {name:<10} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  n {m['support']}")
    if "cost" in result:
        c = result["cost"]
        ops = f"SynOps {c['synops_per_window']:,.0f}" if "synops_per_window" in c else f"MACs {c['macs_per_window']:,}"
        typer.echo(f"{c['params']:,} parameters; {ops} per window")


@app.command()
@one_line_errors
def export(
    checkpoint: Annotated[Path, typer.Option(help="Trained checkpoint.pt from `train` (or `compress`).")],
    out: Annotated[Path, typer.Option(help="Program to write (FILE.pte; FILE.json is written beside it).")],
    onnx: Annotated[
        Path | None, typer.Option(help="Also write the same graphs as ONNX (FILE.onnx + FILE-step.onnx), for "
                                       "comparison with ONNX Runtime (`bench`).")
    ] = None,
) -> None:
    """Export a checkpoint to an ExecuTorch program (XNNPACK) with `forward` (a window) and `step` (one sample
    + state for each of a batch of chains) methods."""
    from l2mu.export.executorch_export import export_program
    from l2mu.model.checkpoint import load_checkpoint

    if out.suffix != ".pte":
        raise ValueError(f"--out {out}: the program file must end in .pte")
    if onnx is not None and onnx.suffix != ".onnx":
        raise ValueError(f"--onnx {onnx}: the file must end in .onnx")
    from l2mu.agent.runtime import native_stderr_silenced

    ckpt = load_checkpoint(checkpoint)
    with native_stderr_silenced():  # torch.export and the lowering passes warn about their own internals
        meta = export_program(ckpt, out)
        if onnx is not None:
            from l2mu.export.onnx_export import export_onnx

            written = export_onnx(ckpt, onnx)
    if onnx is not None:
        typer.echo(f"wrote {', '.join(f'{p} ({p.stat().st_size} bytes)' for p in written.values())}")
    typer.echo(f"wrote {out} ({out.stat().st_size} bytes) and {out.with_suffix('.json').name}: {meta.name}, "
               f"classes {','.join(meta.classes)}, sensors {'+'.join(meta.sensors)}")


@app.command()
@one_line_errors
def compress(
    checkpoint: Annotated[Path, typer.Option(help="Trained checkpoint.pt to prune.")],
    data: Annotated[Path, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")],
    out: Annotated[Path, typer.Option(help="Pruned, fine-tuned checkpoint to write (.pt); `export` it after.")],
    sparsity: Annotated[float, typer.Option(min=0, max=0.99, help="Fraction of synapse weights set to zero.")],
    finetune_epochs: Annotated[int, typer.Option(min=0, help="Fine-tuning epochs with the masks applied.")] = 3,
    scope: Annotated[str, typer.Option(help="layer (the fraction in every Linear layer) or global (one "
                                            "magnitude threshold across them).")] = "layer",
    lr: Annotated[float, typer.Option(min=0, help="Fine-tuning learning rate (AdamW).")] = 5e-4,
    seed: int = 0,
    subjects: SubjectsOpt = None,
    val_subjects: Annotated[
        list[str] | None, typer.Option("--val-subjects", help="Validation subjects (default: the checkpoint's).")
    ] = None,
    max_steps_per_epoch: Annotated[int | None, typer.Option(min=1, help="Cap steps per epoch (quick runs).")]
    = None,
) -> None:
    """Magnitude-prune a checkpoint's synapses and fine-tune it with the masks kept (best validation epoch)."""
    from l2mu.export.compress import FinetuneConfig, compress_checkpoint
    from l2mu.model.wisdm import watch_dir

    if out.suffix != ".pt":
        raise ValueError(f"--out {out}: the checkpoint file must end in .pt")
    watch_dir(data)
    cfg = FinetuneConfig(sparsity=sparsity, epochs=finetune_epochs, scope=scope, lr=lr, seed=seed,
                         max_steps_per_epoch=max_steps_per_epoch, subjects=parse_subjects(subjects),
                         val_subjects=parse_subjects(val_subjects))
    report = compress_checkpoint(checkpoint, data, out, cfg)
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2) + "\n")
    best = report["history"][report["best_epoch"]]["val_macro_f1"]
    typer.echo(f"wrote {out}: {report['achieved']['overall']:.1%} of {report['achieved']['weights']} synapse weights "
               f"zero, best epoch {report['best_epoch']} of {report['finetune_epochs']}"
               + (f", validation macro-F1 {best:.3f}" if best is not None else ""))


@app.command()
@one_line_errors
def models() -> None:
    """List the bundled models."""
    from l2mu.agent.runtime import DEFAULT_MODEL, bundled_dir, bundled_models
    from l2mu.model.metadata import read_metadata

    for name in bundled_models():
        path = bundled_dir() / f"{name}.pte"
        meta = read_metadata(path)
        mark = " (default)" if name == DEFAULT_MODEL else ""
        typer.echo(f"{name}{mark}: {len(meta.classes)} classes [{', '.join(meta.class_names)}], "
                   f"sensors {'+'.join(meta.sensors)}, {path.stat().st_size} bytes")


@app.command("wisdm-recording")
@one_line_errors
def wisdm_recording(
    data: Annotated[Path, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")],
    subject: Annotated[int, typer.Option(help="Subject id.")],
    out: Annotated[Path, typer.Option(help="Recording to write (.csv or .csv.gz).")],
    activities: Annotated[str, typer.Option(help="Activity codes in playing order.")] = "FGOPQRS",
    seconds: Annotated[float, typer.Option(help="Seconds of each activity.", min=1)] = 30.0,
) -> None:
    """Turn one WISDM subject's raw watch samples into a labelled recording that `run --watch replay:` plays."""
    from l2mu.agent.recording import recording_from_wisdm, write_recording

    n = write_recording(out, recording_from_wisdm(data, subject, activities.replace(",", ""), seconds))
    typer.echo(f"wrote {out}: {n} samples")


def default_agent_id() -> str:
    from l2mu.agent.sources import topic_safe

    return topic_safe(socket.gethostname())


@app.command()
@one_line_errors
def run(
    ctx: typer.Context,
    watch: Annotated[
        list[str] | None, typer.Option(help="BLE address, 'demo' or 'replay:FILE'; repeat for several watches. "
                                             "Default: the config file's `watches`.")
    ] = None,
    protocol: Annotated[
        list[str] | None, typer.Option(help="Protocol of the Bluetooth watches: auto, polar, infinitime, metawear, "
                                            "bangle or l2mu; once for all, or once per address in --watch order.")
    ] = None,
    scan_timeout: ScanTimeoutOpt = 10.0,
    retry_budget: RetryBudgetOpt = 120.0,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with defaults for these options (see systemd/config.example.toml)."
                                       " Command-line options and L2MU_* variables override it.")
    ] = None,
    mqtt: Annotated[
        str | None, typer.Option(help="Broker URL (mqtt://host:port or mqtts://host:port). Default: start a "
                                      "local broker.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Bundled model name or path to a .pte.")] = None,
    speed: Annotated[float, typer.Option(help="Replay speed factor (0 = as fast as possible).")] = 1.0,
    agent_id: Annotated[str | None, typer.Option(help="Id in har/status/<agent_id> (default: hostname).")] = None,
    topic_prefix: Annotated[str, typer.Option(help="First topic level.")] = "har",
    decision_period: Annotated[float, typer.Option(help="Seconds between decisions.", min=0.05)] = 1.0,
    echo: Annotated[
        bool | None, typer.Option(help="Print each message received on <prefix>/activity/#. Default: on "
                                        "when the agent starts its own broker.")
    ] = None,
    broker: Annotated[str, typer.Option(help="Local broker when --mqtt is not given: auto, mosquitto, amqtt.")]
    = "auto",
    smoothing: Annotated[
        str, typer.Option(help="How the published activity is smoothed: majority (vote over the last N "
                               "windows), hmm (forward filter) or none (each window's argmax).")
    ] = "majority",
    smoothing_window: Annotated[int, typer.Option(help="N: windows of evidence a change needs.", min=1)] = 5,
    raw_scores: Annotated[
        bool, typer.Option("--raw-scores", help="Also publish each window's scores on <prefix>/scores/<watch>.")
    ] = False,
    ha_discovery: Annotated[
        bool, typer.Option("--ha-discovery", help="Publish Home Assistant MQTT discovery configs.")
    ] = False,
    ha_prefix: Annotated[str, typer.Option(help="Home Assistant discovery prefix.")] = "homeassistant",
    queue_dir: Annotated[
        Path | None, typer.Option(help="Keep undelivered decisions in this directory, so a restart loses none.")
    ] = None,
    queue_size: Annotated[
        int, typer.Option(help="Most undelivered decisions kept; beyond it the oldest are dropped.", min=1)
    ] = 100_000,
    username: Annotated[
        str | None, typer.Option(help="MQTT user name (default: $L2MU_MQTT_USERNAME).")
    ] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="File whose first line is the MQTT password (default: $L2MU_MQTT_PASSWORD).")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate(s) to verify an mqtts:// broker.")] = None,
    cert_file: Annotated[Path | None, typer.Option(help="Client certificate for mqtts:// (PEM).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="Private key of --cert-file (PEM).")] = None,
    mqtt_protocol: Annotated[
        str | None, typer.Option(help="5 or 3.1.1 (default: 5; 3.1.1 for the embedded amqtt broker).")
    ] = None,
) -> None:
    """Recognise activities from watches (or recordings) and publish them over MQTT."""
    serve(**run_options(ctx, config))


def run_options(ctx: typer.Context, config: Path | None) -> dict[str, Any]:
    """`run`'s parameters after the environment overrides and the config file have filled in what was not given."""
    import os

    from l2mu.agent.config import environment_overrides, load_config, merge_options

    given = {name: value for name, value in ctx.params.items() if name != "config"}
    # By name: typer ships its own copy of click, so click.core.ParameterSource is a different enum.
    explicit = {name for name in given if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    options = merge_options(given, explicit, environment_overrides(os.environ), load_config(config) if config else {})
    if not options["watch"]:
        raise ConfigError("no watch given: use --watch, L2MU_WATCHES or `watches` in the --config file")
    return options


def serve(watch: list[str], mqtt: str | None, model: str | None, speed: float, agent_id: str | None,
          topic_prefix: str, decision_period: float, echo: bool | None, broker: str, smoothing: str,
          smoothing_window: int, raw_scores: bool, ha_discovery: bool, ha_prefix: str, queue_dir: Path | None,
          queue_size: int, username: str | None, password_file: Path | None, ca_file: Path | None,
          cert_file: Path | None, key_file: Path | None, mqtt_protocol: str | None,
          protocol: list[str] | None = None, scan_timeout: float = 10.0, retry_budget: float = 120.0) -> None:
    """The agent itself, with every option settled."""
    from l2mu.agent.broker import LocalBroker
    from l2mu.agent.daemon import Agent
    from l2mu.agent.echo import EchoSubscriber
    from l2mu.agent.hass import discovery_messages
    from l2mu.agent.mqtt import MqttPublisher, MqttSecurity, activity_topic, status_topic
    from l2mu.agent.outbox import Outbox
    from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
    from l2mu.agent.sdnotify import Notifier
    from l2mu.agent.smoothing import make_smoother
    from l2mu.agent.sources import parse_sources

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Until the main loop takes over SIGTERM, treat it like Ctrl-C so start-up is interruptible cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    make_smoother(smoothing, 2, smoothing_window)  # a bad --smoothing fails before the model loads
    security = MqttSecurity.from_options(username, password_file, ca_file, cert_file, key_file)
    sources = parse_sources(watch, speed, protocol, ble_options(scan_timeout, retry_budget))
    if len({s.watch_id for s in sources}) != len(sources):
        raise ValueError("two --watch sources have the same watch id")
    notifier = Notifier()  # systemd Type=notify; does nothing outside systemd
    notifier.status("loading model")
    classifier = ExecuTorchClassifier(resolve_model(model))
    agent_id = agent_id or default_agent_id()
    local = None
    if mqtt is None:
        local = LocalBroker(prefer=broker).start()
        mqtt = local.url
        typer.echo(f"started a local {local.kind} broker at {mqtt}", err=True)
    if mqtt_protocol is None:
        mqtt_protocol = "3.1.1" if local is not None and local.kind == "amqtt" else "5"
    echo = local is not None if echo is None else echo
    discovery = [
        discovery_messages(ha_prefix, activity_topic(topic_prefix, s.watch_id), status_topic(topic_prefix, agent_id),
                           agent_id, s.watch_id, classifier.meta.name, list(classifier.meta.class_names))
        for s in sources
    ] if ha_discovery else []
    publisher = MqttPublisher(mqtt, agent_id, prefix=topic_prefix, security=security,
                              outbox=Outbox(queue_dir, queue_size), protocol=mqtt_protocol, discovery=discovery,
                              discovery_prefix=ha_prefix)
    truths: dict[tuple[str, int], str] = {}
    agent = Agent(sources, classifier, publisher, decision_period,
                  on_decision=lambda p, truth: truths.__setitem__((p["watch"], p["seq"]), truth),
                  smoothing=smoothing, smoothing_window=smoothing_window, raw_scores=raw_scores, notifier=notifier)
    subscriber = EchoSubscriber(mqtt, topic_prefix, truths, security) if echo else None
    try:
        if subscriber:
            subscriber.start()
        notifier.status(f"connecting to {publisher.address.host}:{publisher.address.port}")
        publisher.connect()
        # Ready only now: the model loaded and the broker took the session, so systemd's ordering means something.
        notifier.ready(f"running: {len(sources)} watch(es), model {classifier.meta.name}, "
                        f"broker {publisher.address.host}:{publisher.address.port}")
        asyncio.run(agent.run())
    except KeyboardInterrupt:
        pass
    finally:
        notifier.stopping()
        publisher.close()
        if subscriber:
            subscriber.stop()
        if local:
            local.stop()
        notifier.close()
    for s in agent.sessions:
        line = f"{s.source.watch_id}: {s.seq} decisions"
        if s.labelled:
            line += f", {s.correct}/{s.labelled} match the recording's label ({s.correct / s.labelled:.1%})"
        typer.echo(line, err=True)
    if agent.failures and not agent.stop_requested:  # the agent ended because watches failed, not on request
        raise SourceError("; ".join(str(e) for e in agent.failures.values()))


@app.command()
@one_line_errors
def doctor(
    config: Annotated[Path | None, typer.Option(help="The `run --config` file to check against.")] = None,
    watch: Annotated[list[str] | None, typer.Option(help="Watches to check (default: the config's).")] = None,
    mqtt: Annotated[str | None, typer.Option(help="Broker URL (default: the config's).")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the config's).")] = None,
) -> None:
    """Check D-Bus, BlueZ, the broker (with the configured credentials) and the model; exit 1 if any fails."""
    from l2mu.agent.doctor import doctor_options, run_checks

    given = {"watch": watch or None, "mqtt": mqtt, "model": model}
    results = run_checks(doctor_options(config, given, {k for k, v in given.items() if v is not None}))
    for r in results:
        typer.echo(r.line())
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command("stream-accuracy")
@one_line_errors
def stream_accuracy(
    data: Annotated[Path, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")],
    model: Annotated[str | None, typer.Option(help="Bundled model name or path to a .pte.")] = None,
    subjects: SubjectsOpt = None,
    smoothing_window: Annotated[int, typer.Option(help="N for majority and hmm smoothing.", min=1)] = 5,
    activities: Annotated[str, typer.Option(help="Activity codes in playing order.")] = "FGOPQRS",
    seconds: Annotated[float, typer.Option(help="Seconds of each activity.", min=5)] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per subject.")] = False,
) -> None:
    """Replay held-out WISDM subjects through the agent: window vs stream accuracy for each smoothing."""
    from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
    from l2mu.agent.smoothing import SMOOTHING_KINDS
    from l2mu.agent.streameval import measure_wisdm_subject
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


register_ble_commands(app, one_line_errors)
app.add_typer(bench_app, name="bench")


def main() -> None:  # pragma: no cover - console entry point
    app()
