"""`l2mu-agent crossval`: the cross-subject protocol every recipe choice is made with."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from l2mu.agent.cli.app import app, one_line_errors
from l2mu.agent.errors import UsageError

RECIPE_FIXED = {"data", "out", "classes", "sensors", "neuron", "arch", "epochs", "seed", "subjects", "val_subjects",
                "name", "model", "keep", "eval_rates_hz"}


def parse_recipe(items: list[str], own_options: frozenset[str] = frozenset()) -> dict[str, Any]:
    """--recipe KEY=VALUE pairs for the training recipe (TrainConfig), typed like its defaults;
    `own_options` are the fields the command sets through options of their own."""
    from l2mu.model.train import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in RECIPE_FIXED | own_options}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise UsageError(f"--recipe {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        default = fields[key].default
        kind = float if isinstance(default, float) else int if isinstance(default, int) else str
        if default is None:
            kind = int
        try:
            out[key] = kind(text)
        except ValueError:
            raise UsageError(f"--recipe {item!r}: {key} must be {kind.__name__}") from None
    return out


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--eval-rates {text!r}: expected rates in Hz, comma-separated") from None


@app.command()
@one_line_errors
def crossval(
    data: Annotated[Path, typer.Option(help="WISDM-2019 directory (contains raw/watch/).")],
    out: Annotated[Path, typer.Option(help="Directory for the fold runs and crossval.json.")],
    folds: Annotated[int, typer.Option(min=2, help="Folds of subjects (all non-test subjects).")] = 5,
    fold: Annotated[int | None, typer.Option(help="Run only this fold (0-based): one process per fold.")]
    = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per fold; the last epoch is scored.")] = 12,
    classes: Annotated[str, typer.Option(help="hand7 or hand8 (hand7 + other).")] = "hand7",
    sensors: Annotated[str, typer.Option(help="acc-gyro or acc.")] = "acc-gyro",
    neuron: Annotated[str, typer.Option(help="leaky (LIF) or synaptic (current-based LIF).")] = "leaky",
    arch: Annotated[str, typer.Option(help="l2mu, or a non-spiking baseline: lmu, gru.")] = "l2mu",
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Model hyper-parameter KEY=VALUE.")]
    = None,
    recipe: Annotated[
        list[str] | None,
        typer.Option("--recipe", help="Training recipe KEY=VALUE (e.g. time_warp=0.1, rate_floor=0.02)."),
    ] = None,
    eval_rates: Annotated[str, typer.Option(help="Also score validation windows as from watches at these "
                                                 "rates (Hz).")] = "10,12.5",
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """K-fold cross-validation by subject over every non-test subject: mean ± sd accuracy and macro-F1,
    per-subject table, firing rates; writes OUT/crossval.json once every fold is done."""
    from l2mu.agent.cli.models import parse_overrides
    from l2mu.model.crossval import crossval as run_crossval
    from l2mu.model.crossval import pool_subjects
    from l2mu.model.train import CLASS_SETS, SENSOR_SETS, TrainConfig

    if classes not in CLASS_SETS:
        raise UsageError(f"--classes must be one of {', '.join(CLASS_SETS)}")
    if sensors not in SENSOR_SETS:
        raise UsageError(f"--sensors must be one of {', '.join(SENSOR_SETS)}")
    model_overrides = {"dropout": 0.1, **parse_overrides(arch, overrides or [])} if arch == "l2mu" else \
        parse_overrides(arch, overrides or [])
    cfg = TrainConfig(data=data, out=out, classes=classes, sensors=sensors, neuron=neuron, arch=arch,
                      epochs=epochs, seed=seed, model=model_overrides, eval_rates_hz=parse_rates(eval_rates),
                      **parse_recipe(recipe or []))
    n_subjects = len(pool_subjects(cfg))
    if folds > n_subjects:
        raise UsageError(f"--folds {folds}: only {n_subjects} non-test subjects to split")
    if fold is not None and not 0 <= fold < folds:
        raise UsageError(f"--fold must be between 0 and {folds - 1}, not {fold}")
    summary = run_crossval(cfg, k=folds, only_fold=fold, progress=sys.stderr.isatty())
    if summary is None:
        typer.echo(f"fold {fold} done; the summary is written once every fold in {out} is done")
        return
    if as_json:
        typer.echo(json.dumps(summary))
        return
    acc, f1 = summary["accuracy"], summary["macro_f1"]
    typer.echo(f"{folds}-fold cross-validation over {len(summary['by_subject'])} subjects: accuracy "
               f"{acc['mean']:.3f} ± {acc['sd']:.3f}, macro-F1 {f1['mean']:.3f} ± {f1['sd']:.3f}")
    for subject, row in summary["by_subject"].items():
        typer.echo(f"  {subject}  accuracy {row['accuracy']:.3f}  macro-F1 {row['macro_f1']:.3f}  "
                   f"({row['n_windows']} windows)")
    typer.echo(f"wrote {out / 'crossval.json'}")
