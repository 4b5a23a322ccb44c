"""The parsed-file cache returns exactly what the parser returns, and never a stale entry."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from l2mu.model import wisdm


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("L2MU_CACHE_DIR", str(folder))
    return folder


def _assert_same(a: tuple, b: tuple) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_cached_real_file_equals_the_parser(wisdm_root: Path, cache: Path) -> None:
    path = wisdm.sensor_file(wisdm_root, 1600, "gyro")
    parsed = wisdm.parse_raw(path)
    first = wisdm.read_raw(path)  # parses and stores
    assert len(list(cache.glob("*.npz"))) == 1
    second = wisdm.read_raw(path)  # served from the cache
    _assert_same(first, parsed)
    _assert_same(second, parsed)
    assert len(parsed[0]) > 10_000


def test_changed_file_is_parsed_again_and_damaged_entry_is_rewritten(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "data_1700_accel_watch.txt.gz"
    lines = [f"1700,F,{1000 + i * 50_000_000},{i}.5,0.25,-9.8;" for i in range(20)]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    before = wisdm.read_raw(path)
    lines[3] = "1700,G,1150000000,7.0,7.0,7.0;"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    after = wisdm.read_raw(path)
    assert after[0][3] == "G" and before[0][3] == "F"
    _assert_same(after, wisdm.parse_raw(path))
    for entry in cache.glob("*.npz"):
        entry.write_bytes(b"not an npz file")
    _assert_same(wisdm.read_raw(path), wisdm.parse_raw(path))


def test_unwritable_cache_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("L2MU_CACHE_DIR", str(blocker / "cache"))
    path = tmp_path / "data_1700_gyro_watch.txt"
    path.write_text("1700,F,1000,0.1,0.2,0.3;\n1700,F,2000,0.1,0.2,0.4;\n")
    _assert_same(wisdm.read_raw(path), wisdm.parse_raw(path))
