"""`l2mu-agent`: one typer app (app.py), one module per command group.

models: train, evaluate, export, compress, models, wisdm-recording · crossval: crossval ·
run: the agent · ble: scan, record · sim: virtual-watch · bench: bench, bench load, stream-accuracy · doctor: doctor
"""

from __future__ import annotations

# isort: off
# Each module registers its commands on `app`, in this order in --help.
from l2mu.agent.cli.app import app
from l2mu.agent.cli import models, crossval, run, doctor, bench, ble, sim  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app()
