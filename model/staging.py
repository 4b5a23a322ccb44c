"""Write a command's outputs beside their destination and move them in only when all of them are done."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from l2mu.agent.errors import KNOWN_ERRORS, UsageError


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to write into. When the block ends normally its files replace their
    namesakes in `out` (created if need be); when it ends with a user error (bad input) the folder is removed
    and `out` is untouched. Any other end (a bug, Ctrl-C) leaves the folder, with what was computed so far."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
    except KNOWN_ERRORS:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out.mkdir(exist_ok=True)
    for f in sorted(tmp.iterdir()):
        f.replace(out / f.name)
    tmp.rmdir()


@contextmanager
def staged_files(out: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """`out` and its siblings with the other `suffixes` (FILE.pte, FILE.json, …), written under a staging
    folder beside them (the yielded path is where `out` is to be written) and moved in together at the end;
    the main file last, so that a reader never finds it beside stale companions for longer than a rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".partial", dir=out.parent))
    target = tmp / out.name
    try:
        yield target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for suffix in (*suffixes, out.suffix):
        made = target.with_suffix(suffix)
        if made.exists():
            made.replace(out.with_suffix(suffix))
    shutil.rmtree(tmp, ignore_errors=True)
