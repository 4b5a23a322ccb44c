"""Every command group's commands have help."""

from __future__ import annotations


def test_new_commands_have_help() -> None:
    from typer.testing import CliRunner

    from l2mu.agent.cli import app

    for command in ("scan", "record", "virtual-watch"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
