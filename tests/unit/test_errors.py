"""User-facing errors (l2mu.agent.errors): one line and exit status 2; a bug in our own code keeps its traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from l2mu.agent.cli import app
from l2mu.agent.errors import KNOWN_ERRORS, UsageError, UserError


def output(result) -> str:  # noqa: ANN001
    """What the command wrote to stderr (click's runner keeps it apart; older ones mixed it into output)."""
    try:
        return result.stderr
    except ValueError:
        return result.output


def test_known_errors_are_ours_not_pythons() -> None:
    for builtin in (ValueError, KeyError, TypeError, RuntimeError, OSError, AttributeError):
        assert not any(issubclass(builtin, known) for known in KNOWN_ERRORS), builtin
    assert UserError in KNOWN_ERRORS


def test_a_bad_option_is_one_line_and_exit_status_2() -> None:
    result = CliRunner().invoke(app, ["export", "--checkpoint", "c.pt", "--out", "program.txt"])
    assert result.exit_code == 2
    lines = [ln for ln in output(result).splitlines() if ln.strip()]
    assert lines == ["error: --out program.txt: the program file must end in .pte"]


def test_a_bug_in_our_code_is_not_passed_off_as_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import l2mu.agent.runtime

    def broken() -> list[str]:
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(l2mu.agent.runtime, "bundled_models", broken)
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)  # propagated: Python prints its traceback
    assert "error: " not in output(result)


def test_usage_errors_are_user_errors() -> None:
    assert issubclass(UsageError, UserError)
