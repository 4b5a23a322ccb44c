"""Bangle.js 2 reference firmware, run under node with the watch stubbed, decoded in Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from l2mu.firmware_bridge.bangle import (
    BANGLE_ACC_RANGE_G,
    FIRMWARE_DIR,
    FIRMWARE_PATH,
    BangleDriver,
    bangle_rate,
)
from l2mu.firmware_bridge.driver import STANDARD_GRAVITY
from l2mu.firmware_bridge.l2mu_profile import (
    L2MU_CONTROL_CHAR,
    L2MU_IMU_CHAR,
    L2MU_SERVICE,
    decode_packet,
)

LSB_MS2 = BANGLE_ACC_RANGE_G / 32768 * STANDARD_GRAVITY


@pytest.fixture(scope="module")
def session() -> dict:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("L2MU_REQUIRE_NODE"):
            pytest.fail("node is required (L2MU_REQUIRE_NODE is set) but not on PATH")
        pytest.skip("node is not installed")
    done = subprocess.run(
        [node, str(FIRMWARE_DIR / "test_pack.js")], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_firmware_and_python_agree_on_the_uuids(session: dict) -> None:
    assert (session["service"], session["imu"], session["control"]) == (L2MU_SERVICE, L2MU_IMU_CHAR, L2MU_CONTROL_CHAR)
    text = FIRMWARE_PATH.read_text()
    for uuid in (L2MU_SERVICE, L2MU_IMU_CHAR, L2MU_CONTROL_CHAR):
        assert text.count(uuid) == 1


def test_round_trip_values_sequence_and_time(session: dict) -> None:
    inputs = session["inputs"]
    attempts = session["attempts"]
    driver = BangleDriver()
    decoded = []
    expected = []
    position = 0
    for attempt in attempts:
        data = bytes.fromhex(attempt["bytes"])
        n = len(decode_packet(data).acc)
        if attempt["sent"]:
            decoded += driver.decode(L2MU_IMU_CHAR, data, 0.0)
            expected += inputs[position : position + n]
        position += n
    assert position == len(inputs)  # every reading went into some packet
    assert driver.stream.gaps == sum(not a["sent"] for a in attempts) == 1
    assert len(decoded) == len(expected) > 0
    for sample, want in zip(decoded, expected, strict=True):
        assert sample.sensor == "acc"
        clipped = [max(-BANGLE_ACC_RANGE_G, min(BANGLE_ACC_RANGE_G * 32767 / 32768, want[k])) for k in "xyz"]
        assert sample.xyz == pytest.approx([g * STANDARD_GRAVITY for g in clipped], abs=LSB_MS2 / 2 + 1e-9)
    # The watch clock in ms wraps at 2^32, so compare times relative to the first sample.
    t = [s.t for s in decoded]
    assert t == sorted(t)
    for sample, want in zip(decoded, expected, strict=True):
        assert sample.t - t[0] == pytest.approx(want["t"] - expected[0]["t"], abs=2e-3)
    assert driver.native_rate_hz == 25.0


def test_packets_respect_the_requested_size_and_cut_at_the_pause(session: dict) -> None:
    sizes = [len(decode_packet(bytes.fromhex(a["bytes"])).acc) for a in session["attempts"]]
    assert sizes == [5, 5, 3, 5, 5]  # START asked for 5 per packet; the 1 s stall cut the third


@pytest.mark.parametrize(("asked", "got"), [(0, 12.5), (10, 12.5), (20, 25.0), (37.5, 50.0), (60, 50.0), (500, 100.0)])
def test_rate_choice_matches_the_firmware(asked: float, got: float, session: dict) -> None:
    assert [asked, got] in session["rates"]
    assert bangle_rate(asked) == got
    assert BangleDriver(rate_hz=asked if asked else None).native_rate_hz == (got if asked else 25.0)
