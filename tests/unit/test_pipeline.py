"""The agent's online signal path equals the offline one used for training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l2mu.agent.pipeline import StreamAligner, Windower
from l2mu.agent.recording import (
    RecordingError,
    Sample,
    read_recording,
    recording_from_wisdm,
    write_recording,
)
from l2mu.model.timegrid import align_streams


def test_online_alignment_equals_offline_alignment_on_real_data(wisdm_root: Path) -> None:
    samples = recording_from_wisdm(wisdm_root, 1600, "FQ", seconds=20)
    aligner = StreamAligner(["acc", "gyro"], 20.0)
    online = [g for s in samples for g in aligner.push(s.sensor, s.t, s.xyz)[0]]
    streams = []
    for sensor in ("acc", "gyro"):
        mine = [s for s in samples if s.sensor == sensor]
        streams.append((np.array([s.t for s in mine]), np.array([s.xyz for s in mine])))
    offline = align_streams(streams, 20.0)
    grid = np.concatenate([g for g, _ in offline])
    values = np.concatenate([v for _, v in offline])
    n = min(len(online), len(grid))
    assert n > 0.95 * len(grid)  # online may lag by the samples still awaiting a right neighbour
    np.testing.assert_allclose([g.t for g in online[:n]], grid[:n], atol=1e-9)
    np.testing.assert_allclose(np.stack([g.values for g in online[:n]]), values[:n], atol=1e-9)


def test_out_of_order_samples_are_dropped_and_counted() -> None:
    aligner = StreamAligner(["acc"], 20.0)
    for t in (0.0, 0.05, 0.1, 0.07, 0.15):
        aligner.push("acc", t, (t, 0, 0))
    assert aligner.counters.samples_out_of_order == 1


def test_gap_restarts_grid_and_is_reported() -> None:
    aligner = StreamAligner(["acc"], 20.0)
    out = []
    gaps = 0
    for t in [*np.arange(0, 1, 0.05), *np.arange(3, 4, 0.05)]:
        grid, gap = aligner.push("acc", float(t), (t, 0, 0))
        out += grid
        gaps += gap
    assert gaps == 1
    times = np.array([g.t for g in out])
    assert not np.any((times > 0.96) & (times < 3.0))


def test_windower_emits_every_hop_once_full() -> None:
    from l2mu.agent.pipeline import GridSample

    w = Windower(length=40, hop=20)
    emitted = [i for i in range(100) if w.push(GridSample(i * 0.05, np.full(6, i))) is not None]
    assert emitted == [39, 59, 79, 99]
    w.reset()
    assert w.push(GridSample(0, np.zeros(6))) is None


def test_recording_round_trip_plain_and_gzip(tmp_path: Path) -> None:
    samples = [Sample(0.05 * i, "acc" if i % 2 else "gyro", (i, -i, 0.5), "typing") for i in range(50)]
    for name in ("r.csv", "r.csv.gz"):
        write_recording(tmp_path / name, samples)
        back = read_recording(tmp_path / name)
        assert [(s.sensor, s.label) for s in back] == [(s.sensor, s.label) for s in samples]
        np.testing.assert_allclose([s.xyz for s in back], [s.xyz for s in samples])


@pytest.mark.parametrize("content,message", [
    ("hello\n", "not an l2mu recording"),
    ("# l2mu-recording v1\ntime_s,sensor,x,y,z,label\n0.0,acc,1,2\n", "bad row"),
    ("# l2mu-recording v1\ntime_s,sensor,x,y,z,label\n0.0,magnetometer,1,2,3,\n", "unknown sensor"),
    ("# l2mu-recording v1\ntime_s,sensor,x,y,z,label\n", "no samples"),
])
def test_bad_recordings_get_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(RecordingError, match=message):
        read_recording(path)
