"""`l2mu-agent train`, `evaluate`, `personalise`, `export`, `compress`, `models` and `wisdm-recording`: the model's
commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from l2mu.agent.cli.app import SubjectsOpt, app, one_line_errors, parse_names, parse_subjects
from l2mu.agent.cli.crossval import parse_recipe
from l2mu.agent.errors import UsageError


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
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with KEY one of {allowed}")
        kind = type(fields[key].default)
        try:
            out[key] = kind(text)
        except ValueError:
            raise UsageError(f"--set {item!r}: {key} must be {kind.__name__}") from None
    return out



RecordingsOpt = Annotated[list[Path] | None, typer.Option(
    "--recordings", help="Folder of labelled recordings, one sub-folder per wearer (files directly in it: one "
                         "wearer named after it); repeatable.")]


def check_split(data: Path, sensors: str, subjects: list[int] | None, val_subjects: list[int] | None) -> None:
    """The subject split training would make, so a choice that leaves nothing to train on fails before work."""
    from l2mu.model import wisdm
    from l2mu.model.splits import split_subjects
    from l2mu.model.train import SENSOR_SETS

    wisdm.watch_dir(data)
    available = wisdm.list_subjects(data, SENSOR_SETS[sensors])
    if not available:
        return  # training reports the empty dataset itself
    try:
        split_subjects(available, subjects, val_subjects)
    except ValueError as exc:  # split_subjects' one refusal: no training subject left
        raise UsageError(str(exc)) from None


def only_l2mu(ckpt: Any, what: str) -> None:
    """Baseline checkpoints (LMU, GRU) are for comparison; only an L2MU is exported or pruned."""
    from l2mu.model.l2mu import L2MU

    if not isinstance(ckpt.model, L2MU):
        raise UsageError(f"{ckpt.metadata.name}: only L2MU checkpoints {what}")


@app.command()
@one_line_errors
def train(
    out: Annotated[Path, typer.Option(help="Output directory for checkpoint, report and plots.")],
    data: Annotated[Path | None, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")] = None,
    recordings: RecordingsOpt = None,
    val_wearers: Annotated[list[str] | None, typer.Option(
        "--val-wearers", help="Validation wearers by name (recording wearer folders; WISDM subjects by number), "
                              "comma-separated or repeated (default: see README).")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 40,
    subjects: SubjectsOpt = None,
    val_subjects: Annotated[
        list[str] | None, typer.Option("--val-subjects", help="Validation subjects (default: the fixed split).")
    ] = None,
    classes: Annotated[str | None, typer.Option(
        help="hand7, hand8 (hand7 + other) or class names a,b,… (default: hand7 with --data, else every label "
             "recorded).")] = None,
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
    window: Annotated[int, typer.Option(min=2, help="Samples per window on the 20 Hz grid (40 = 2 s); with "
                                                    "another length set theta to it too (--set theta=N).")] = 40,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without validation gain before stopping.")] = 10,
    dropout: Annotated[float, typer.Option(min=0, max=0.9, help="Spike dropout while training.")] = 0.1,
    rotate_deg: Annotated[float, typer.Option(min=0, help="Augmentation: random watch rotation within ±deg.")]
    = 30.0,
    recipe: Annotated[
        list[str] | None,
        typer.Option("--recipe", help="Training recipe KEY=VALUE (e.g. time_warp=0.1); see `crossval`."),
    ] = None,
    final: Annotated[bool, typer.Option("--final", help="Final fit: every non-test subject (or --subjects) "
                                                        "trains for exactly --epochs; no validation.")] = False,
) -> None:
    """Train an L2MU on WISDM-2019 watch data and/or labelled recordings, split by wearer; writes checkpoint.pt,
    report.json, PNGs."""
    from l2mu.model.staging import staged_dir
    from l2mu.model.train import SENSOR_SETS, TrainConfig
    from l2mu.model.train import train as run_training

    if data is None and not recordings:
        raise UsageError("give --data (WISDM-2019) and/or --recordings DIR")
    if classes is not None and not classes.replace(",", "").strip():
        raise UsageError("--classes: give hand7, hand8 or class names a,b,…")
    if sensors not in SENSOR_SETS:
        raise UsageError(f"--sensors must be one of {', '.join(SENSOR_SETS)}")
    if neuron not in ("leaky", "synaptic"):
        raise UsageError("--neuron must be leaky or synaptic")
    if arch not in ("l2mu", "lmu", "gru"):
        raise UsageError("--arch must be l2mu, lmu or gru")
    model_overrides = {"dropout": dropout, **parse_overrides(arch, overrides or [])}
    if data is not None:
        check_split(data, sensors, parse_subjects(subjects), parse_subjects(val_subjects))
    if val_wearers and val_subjects:
        raise UsageError("give --val-wearers or --val-subjects, not both")
    cfg = TrainConfig(
        data=data, out=out, classes=classes, sensors=sensors, neuron=neuron, epochs=epochs, seed=seed,
        batch_size=batch_size, subjects=parse_subjects(subjects), val_subjects=parse_subjects(val_subjects),
        recordings=list(recordings or []), val_wearers=parse_names(val_wearers), window=window,
        max_steps_per_epoch=max_steps_per_epoch, patience=patience, rotate_deg=rotate_deg, arch=arch,
        model=model_overrides,
        **parse_recipe(recipe or [], frozenset({"batch_size", "max_steps_per_epoch", "patience", "rotate_deg"})),
    )
    if final:
        if val_subjects or val_wearers:
            raise UsageError("--final trains on every wearer; it takes no --val-subjects / --val-wearers")
        cfg.val_subjects, cfg.keep = [], "last"
        if recordings:
            cfg.val_wearers = []
    with staged_dir(out) as staging:  # nothing lands in --out unless training completes
        cfg.out = staging
        report = run_training(cfg, progress=sys.stderr.isatty())
    val = report["validation"]
    if final:
        typer.echo(f"trained {len(report['history'])} epochs on subjects {report['subjects']['train_subjects']} "
                   f"({report['seconds']} s); wrote {out / 'checkpoint.pt'}")
        return
    split = report["subjects"]
    who = [*map(str, split.get("validation_subjects", [])), *split.get("validation_wearers", [])]
    if not who:
        typer.echo(f"no validation wearer (one wearer only; name one with --val-wearers when you have two): kept "
                   f"epoch {report['best_epoch']}, the lowest training loss ({report['seconds']} s); wrote "
                   f"{out / 'checkpoint.pt'}")
        return
    typer.echo(
        f"best epoch {report['best_epoch']}: validation accuracy {val.get('accuracy', float('nan')):.3f}, "
        f"macro-F1 {val.get('macro_f1', float('nan')):.3f} on {'subjects' if recordings is None else 'wearers'} "
        f"{', '.join(who)} ({report['seconds']} s); wrote {out / 'checkpoint.pt'}"
    )


def load_scorer(model: str | None) -> tuple[Any, Any, Any]:
    """(metadata, counts function on normalised windows, eager checkpoint or None) of a bundled name, a .pte
    program (scored by the program; its .pt twin beside it, if shipped, is returned for counting spikes) or a
    .pt checkpoint."""
    import numpy as np

    from l2mu.model.checkpoint import load_checkpoint

    if model and model.endswith(".pt"):
        import torch

        ckpt = load_checkpoint(Path(model))

        def eager_counts(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return ckpt.model(torch.from_numpy(x)).numpy()

        return ckpt.metadata, eager_counts, ckpt
    from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model

    program = resolve_model(model)
    clf = ExecuTorchClassifier(program)
    twin = load_checkpoint(program.with_suffix(".pt")) if program.with_suffix(".pt").is_file() else None

    def program_counts(x: np.ndarray) -> np.ndarray:
        return np.stack([clf.counts(w) for w in x])

    return clf.meta, program_counts, twin


def _echo_scores(result: dict, source: str) -> None:
    """An evaluation's headline and per-class scores, for a terminal."""
    typer.echo(f"model {result['model']}: {result['n_windows']} windows from {source}")
    typer.echo(f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}")
    for name, m in result["per_class"].items():
        typer.echo(f"  {name:<10} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  n {m['support']}")


@app.command()
@one_line_errors
def evaluate(
    data: Annotated[Path | None, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")] = None,
    recordings: RecordingsOpt = None,
    model: Annotated[str | None, typer.Option(help="Bundled model name, .pte program or .pt checkpoint.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    subjects: SubjectsOpt = None,
    hop: Annotated[
        int | None, typer.Option(min=1, help="Samples between windows (default: the window length, no overlap).")
    ] = None,
    cost: Annotated[
        bool, typer.Option(help="Also count SynOps (L2MU) or MACs (baselines) per window; needs the .pt checkpoint.")
    ] = True,
    watch_rate: Annotated[float | None, typer.Option(
        min=1.0, max=20.0, help="Score as from a watch sampling at this rate (Hz), resampled as the agent does.")]
    = None,
) -> None:
    """Window accuracy, macro-F1, per-class scores and confusion of a model on WISDM subjects or on labelled
    recordings (--recordings: one sub-folder per wearer, scored per wearer too)."""
    import numpy as np

    from l2mu.model.evaluate import evaluate_recordings, evaluate_windows
    from l2mu.model.synops import compute_cost
    from l2mu.model.wisdm import watch_dir

    if (data is None) == (not recordings):
        raise UsageError("give --data (WISDM-2019) or --recordings DIR, one of them")
    if data is not None:
        watch_dir(data)  # a wrong --data is reported before any model is loaded
    meta, counts_fn, ckpt = load_scorer(model)
    if recordings:
        result = evaluate_recordings(recordings, meta, counts_fn, hop=hop)
        if as_json:
            typer.echo(json.dumps(result))
            return
        _echo_scores(result, f"{result['n_wearers']} wearers")
        for wearer, m in result["by_wearer"].items():
            typer.echo(f"  wearer {wearer:<12} accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
                       f"n {m['n_windows']}")
        if result["unmatched_labels"]:
            typer.echo("left out (not one of the model's classes): "
                       + ", ".join(f"{k} ({v} windows)" for k, v in result["unmatched_labels"].items()))
        return
    cost_fn = None
    if ckpt is not None and cost:
        eager = ckpt.model

        def cost_fn(x: np.ndarray) -> dict:
            return compute_cost(eager, x)

    result = evaluate_windows(data, meta, counts_fn, parse_subjects(subjects), hop=hop, cost_fn=cost_fn,
                              watch_rate_hz=watch_rate)
    if as_json:
        typer.echo(json.dumps(result))
        return
    _echo_scores(result, f"{result['n_subjects']} subjects")
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
    """Export a checkpoint to an ExecuTorch program (XNNPACK) with `chunk` (one chain through a run of samples;
    a window is a few calls) and `step` (one sample + state for each of a batch of chains) methods."""
    from l2mu.export.executorch_export import export_program
    from l2mu.model.checkpoint import load_checkpoint

    if out.suffix != ".pte":
        raise UsageError(f"--out {out}: the program file must end in .pte")
    if onnx is not None and onnx.suffix != ".onnx":
        raise UsageError(f"--onnx {onnx}: the file must end in .onnx")
    from l2mu.agent.runtime import native_stderr_silenced

    ckpt = load_checkpoint(checkpoint)
    only_l2mu(ckpt, "export to an agent program")
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
def personalise(
    recordings: Annotated[list[Path], typer.Option(
        "--recordings", help="One wearer's labelled recordings (a folder; its files at any depth), labelled with "
                             "the model's class names or codes; repeatable.")],
    out: Annotated[Path, typer.Option(help="Program to write (FILE.pte; FILE.json, FILE.pt and FILE.report.json "
                                           "beside it).")],
    model: Annotated[str | None, typer.Option(help="Bundled model name or .pte program (its .pt checkpoint "
                                                   "beside it) to start from.")] = None,
    trainable: Annotated[str | None, typer.Option(
        help="Weights that learn: all, or readout (h and output; default: the measured choice).")] = None,
    lr: Annotated[float | None, typer.Option(min=0, help="Learning rate (AdamW; default: the measured one).")]
    = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Most epochs (early stop on the held-out part).")]
    = None,
    name: Annotated[str, typer.Option(help="Model name in the metadata (default: MODEL-WEARER).")] = "",
    seed: int = 0,
) -> None:
    """Fine-tune a shipped model on a few minutes of one wearer's own recordings (early stop on a held-out part
    of them) and export it as a program the agent runs."""
    import dataclasses

    from l2mu.agent.runtime import native_stderr_silenced, resolve_model
    from l2mu.export.executorch_export import export_program
    from l2mu.model.checkpoint import load_checkpoint
    from l2mu.model.personalise import PersonaliseConfig, personalise, wearer_segments
    from l2mu.model.staging import staged_files

    if out.suffix != ".pte":
        raise UsageError(f"--out {out}: the program file must end in .pte")
    if trainable not in (None, "all", "readout"):
        raise UsageError("--trainable must be all or readout")
    program = Path(model) if model and model.endswith(".pt") else resolve_model(model)
    eager = program.with_suffix(".pt")
    if not eager.is_file():
        raise UsageError(f"{program}: no eager checkpoint {eager.name} beside it to fine-tune (the bundled models "
                         f"ship one; `train` writes one)")
    ckpt = load_checkpoint(eager)
    only_l2mu(ckpt, "are personalised")
    segments = wearer_segments(recordings, ckpt)
    defaults = PersonaliseConfig()
    cfg = dataclasses.replace(defaults, trainable=trainable or defaults.trainable, lr=defaults.lr if lr is None else lr,
                              epochs=epochs or defaults.epochs, seed=seed)
    with staged_files(out, (".pt", ".report.json", ".json")) as target:
        work = target.parent / "work"
        report = personalise(ckpt, segments, work, cfg, name=name)
        tuned = load_checkpoint(work / "checkpoint.pt")
        (work / "checkpoint.pt").replace(target.with_suffix(".pt"))  # the tuned checkpoint, as written
        with native_stderr_silenced():
            export_program(tuned, target)
        first = report["history"][0]
        best = next(h for h in report["history"] if h["epoch"] == report["best_epoch"])
        summary = {"model": report["model"], "from": ckpt.metadata.name, "recipe": dataclasses.asdict(cfg),
                   "data": report["subjects"], "best_epoch": report["best_epoch"],
                   "held_out_before": {"accuracy": first["val_accuracy"], "macro_f1": first["val_macro_f1"]},
                   "held_out_after": {"accuracy": best["val_accuracy"], "macro_f1": best["val_macro_f1"]},
                   "history": report["history"], "seconds": report["seconds"]}
        target.with_suffix(".report.json").write_text(json.dumps(summary, indent=2) + "\n")
    kept = "kept the shipped weights (no epoch beat them)" if report["best_epoch"] < 0 else \
        f"best epoch {report['best_epoch']}"
    typer.echo(f"personalised {ckpt.metadata.name} for {report['subjects'].get('personal_wearer', '?')}: held-out "
               f"accuracy {summary['held_out_before']['accuracy']:.3f} -> {summary['held_out_after']['accuracy']:.3f} "
               f"({kept}; {report['seconds']} s); wrote {out}, {out.with_suffix('.json').name}, "
               f"{out.with_suffix('.pt').name}, {out.with_suffix('.report.json').name}")


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
    from l2mu.export.compress import SCOPES, FinetuneConfig, compress_checkpoint
    from l2mu.model.checkpoint import load_checkpoint
    from l2mu.model.wisdm import watch_dir

    if out.suffix != ".pt":
        raise UsageError(f"--out {out}: the checkpoint file must end in .pt")
    if scope not in SCOPES:
        raise UsageError(f"--scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    watch_dir(data)
    only_l2mu(load_checkpoint(checkpoint), "are pruned here")
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
