"""Checkpoints: a file that is not one is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.metadata import ModelFileError


def test_garbage_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="not a usable checkpoint"):
        load_checkpoint(bad)
