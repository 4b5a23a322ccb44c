"""How fast a backlog is delivered (broker PUBACKs) once a late broker appears, via the agent's publisher.

Not part of the test suite (tests/integration/test_mqtt_outage.py checks the behaviour: every decision, from seq 0,
in order). For each backlog size and queue kind, the agent's `MqttPublisher` — with its `Outbox` in memory or in a
queue directory, as `run` builds it — starts while its broker (a mosquitto of our own, default configuration) is
down, and is handed N decisions shaped like the agent's. Then the broker starts and the publisher finds it at
its next retry. Reported per run:

- `connect_s`: broker started → the publisher's session is up (its retry interval, here 0.5 s),
- `queue_s`: handing the N decisions to the publisher until all are queued (with a queue directory: on disk),
- `drain_s`: session up → the broker's acknowledgement (PUBACK) of the last decision,
- `per_s`: N / drain_s,
- `in_order` and `missing`: whether the acknowledgements came for seq 0 … N−1 in order (QoS 1 may repeat one;
  first ones count), and how many never came.

`python -m l2mu.agent.bench.drain [--sizes 1000,10000,100000] --out bench/drain.json`
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

RETRY_S = 0.5


def decision(seq: int) -> dict:
    """A decision shaped as the agent publishes it (l2mu.agent.daemon.build_payload), with made-up values."""
    names = ("typing", "brushing teeth", "catching", "dribbling", "writing", "clapping", "folding clothes", "other")
    scores = {name: round(0.9 if i == 0 else 0.1 / 7, 4) for i, name in enumerate(names)}
    return {"watch": "w0", "activity": "typing", "activity_code": "F", "confidence": 0.9, "raw_activity": "typing",
            "scores": scores, "window_start": 1_700_000_000.0 + seq, "window_end": 1_700_000_002.0 + seq,
            "model": "hand8-acc-gyro", "model_id": "0123456789ab", "seq": seq}


def drain_once(n: int, queue_dir: Path | None) -> dict:
    from l2mu.agent.broker import LocalBroker
    from l2mu.agent.mqtt import MqttPublisher
    from l2mu.agent.outbox import Outbox

    broker = LocalBroker(prefer="mosquitto")
    up = threading.Event()
    up_at: list[float] = []
    acked: list[int] = []  # seq of each decision the broker acknowledged, in acknowledgement order
    last_at = [0.0]
    done = threading.Event()

    def on_connection(is_up: bool) -> None:
        if is_up and not up.is_set():
            up_at.append(time.monotonic())
            up.set()

    def on_delivered(topic: str, payload: str, acked_at: float) -> None:
        acked.append(json.loads(payload)["seq"])
        last_at[0] = acked_at
        if len(acked) == n:
            done.set()

    pub = MqttPublisher(broker.url, agent_id=f"drain{n}", outbox=Outbox(queue_dir, max(n, 1)),
                        on_connection=on_connection, on_delivered=on_delivered, retry_min_s=RETRY_S,
                        retry_max_s=RETRY_S)
    try:
        pub.connect(timeout=1.0)  # refused: the publisher retries in the background, decisions queue
        queued_from = time.monotonic()
        for seq in range(n):
            pub.publish_decision("w0", decision(seq))
        while len(pub.outbox) < n:  # the sender thread has queued them all (under a queue directory: fsynced)
            time.sleep(0.01)
        queue_s = time.monotonic() - queued_from
        started = time.monotonic()
        broker.start()
        if not up.wait(60):
            raise RuntimeError("the publisher never connected")
        done.wait(max(60.0, n / 100))
        drained = last_at[0] - up_at[0]
        firsts = list(dict.fromkeys(acked))  # QoS 1 may repeat one after a reconnect
        return {"decisions": n, "queue": "disk" if queue_dir else "memory", "queue_s": round(queue_s, 2),
                "connect_s": round(up_at[0] - started, 2), "drain_s": round(drained, 2),
                "per_s": round(n / max(drained, 1e-6)), "in_order": firsts == list(range(len(firsts))),
                "missing": n - len(firsts)}
    finally:
        pub.close(drain_timeout=0.0)
        broker.stop()


def run(sizes: list[int]) -> dict:
    rows = []
    for n in sizes:
        rows.append(drain_once(n, None))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="l2mu-drain-") as d:
            rows.append(drain_once(n, Path(d)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"what": __doc__.split("\n\n")[0], "retry_s": RETRY_S, "broker": "mosquitto on 127.0.0.1, default config",
            "machine": {"python": platform.python_version(), "platform": platform.platform()}, "results": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = run([int(v) for v in args.sizes.split(",")])
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
