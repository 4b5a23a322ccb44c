"""The one interface between a watch's BLE notifications and SI-unit IMU samples.

Like bleak's backends, every watch family lives in its own module behind one small
abstract class, `WatchDriver`. A driver knows GATT UUIDs, the bytes to write to start
and stop streaming, and how to turn notification bytes into `ImuSample`s. It never
touches Bluetooth itself, so it is fully testable without a radio.

How a (bleak-based) runner drives one:

1. Connect, list the services, pick the class: `pick_driver(uuids)` for `--protocol auto`
   or `driver_by_name(name)`; instantiate it.
2. `start_notify` on every UUID in `driver.notify_uuids`; hand each notification to
   `driver.decode(char_uuid, data, received_at=time.time())` and forward the samples.
   `DecodeError` means "drop this notification, count it"; the stream goes on.
3. Write every `driver.prepare_commands()` then every `driver.start_commands()`, in order,
   with `response=driver.write_with_response`. Where `driver.expects_responses` is true,
   wait for the next notification on one of `driver.response_uuids` after each write:
   `decode()` passes it to `parse_response()`, which raises `DecodeError` (with the
   protocol's status name in `.status`) when the watch refused the command.
4. To finish, write `driver.stop_commands()`; call `driver.reset()` after a reconnect.

Timestamps (`ImuSample.t`) are seconds on the watch's clock where the protocol carries
one, else on the runner's clock through `received_at`. Each driver keeps every sensor's
timestamps non-decreasing across calls (see `Timeline`), so a consumer never sees time
run backwards.
"""

from __future__ import annotations

import functools
import importlib
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

Sensor = Literal["acc", "gyro"]

STANDARD_GRAVITY = 9.80665  # m/s² per g
DEG_TO_RAD = math.pi / 180.0

# Every Bluetooth SIG 16/32-bit UUID is this base with the short value in the first field.
_SIG_BASE_SUFFIX = "-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True, slots=True)
class ImuSample:
    """One IMU reading. t: seconds (watch clock); xyz: m/s² for "acc", rad/s for "gyro"; label: the true
    activity where a recording knows it (a watch never does). The agent's one sample type, from the driver
    through the intake to the pipeline (l2mu.agent.events.Sample)."""

    t: float
    sensor: Sensor
    xyz: tuple[float, float, float]
    label: str = ""


class DecodeError(ValueError):
    """Bytes a decoder cannot accept. `reason` is short and fixed per failure kind; `status`
    is the protocol's own error name when a watch answered a command with an error."""

    def __init__(self, reason: str, status: str | None = None) -> None:
        super().__init__(reason if status is None else f"{reason}: {status}")
        self.reason = reason
        self.status = status


class UnknownDriverError(LookupError):
    pass


class GattWrite(NamedTuple):
    """One characteristic write; a plain (char_uuid, data) pair when unpacked."""

    char_uuid: str
    data: bytes


@functools.lru_cache(maxsize=1024)  # pure, and called for every notification with a handful of distinct values
def normalize_uuid(value: str) -> str:
    """Lower-case 128-bit form; 16- and 32-bit SIG short forms ("180d", "0x180D") expand."""
    text = value.strip().lower()
    text = text.removeprefix("0x")
    if len(text) in (4, 8) and all(c in "0123456789abcdef" for c in text):
        return text.rjust(8, "0") + _SIG_BASE_SUFFIX
    return str(uuid.UUID(text))


def check_finite(values: Iterable[float], what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise DecodeError(f"non-finite {what}")


class Timeline:
    """Keeps one sensor's timestamps non-decreasing across decode() calls.

    Small overlaps (clock jitter between batches) are clamped to the last emitted time.
    A backwards jump larger than `jump_s` means the watch clock was reset or set back; the
    stream is then re-anchored one period after the last emitted sample and `jumps` counts
    it, because a consumer that dropped everything until the clock caught up would go
    blind for as long as the clock moved back.
    """

    def __init__(self, jump_s: float = 1.0) -> None:
        self.jump_s = jump_s
        self.offset = 0.0
        self.last: float | None = None
        self.jumps = 0

    def reset(self) -> None:
        self.offset = 0.0
        self.last = None

    def place(self, times: Sequence[float], period: float) -> list[float]:
        if not times:
            return []
        shifted = [t + self.offset for t in times]
        if self.last is not None and self.last - shifted[0] > self.jump_s:
            delta = self.last + period - shifted[0]
            self.offset += delta
            shifted = [t + delta for t in shifted]
            self.jumps += 1
        out: list[float] = []
        floor = -math.inf if self.last is None else self.last
        for t in shifted:
            floor = max(floor, t)
            out.append(floor)
        self.last = out[-1]
        return out


class WatchDriver(ABC):
    """Bytes ↔ samples for one watch family. Subclasses set the class attributes below."""

    name: ClassVar[str]
    # Advertised/discovered services that identify the family (any one of them matches).
    service_uuids: ClassVar[tuple[str, ...]]
    # Further services that make the match more specific (see match_score).
    hint_service_uuids: ClassVar[tuple[str, ...]] = ()
    # Characteristics to subscribe to.
    notify_uuids: ClassVar[tuple[str, ...]]
    # Subset of notify_uuids on which the watch answers commands.
    response_uuids: ClassVar[tuple[str, ...]] = ()
    write_with_response: ClassVar[bool] = False
    expects_responses: ClassVar[bool] = False

    def __init__(self) -> None:
        self._timelines: dict[str, Timeline] = {}

    # Per instance, since some families learn them from the watch (see prepare_commands).
    @property
    @abstractmethod
    def sensors(self) -> tuple[Sensor, ...]:
        """The sensors this driver streams, e.g. ("acc", "gyro")."""

    @property
    @abstractmethod
    def native_rate_hz(self) -> float:
        """Sample rate the watch streams at once started (per sensor)."""

    @classmethod
    def match_score(cls, service_uuids: Iterable[str]) -> int:
        """0 if these discovered services do not identify this family; higher is better."""
        found = {normalize_uuid(u) for u in service_uuids}
        if not found.intersection(cls.service_uuids):
            return 0
        return 10 + len(found.intersection(cls.hint_service_uuids))

    def prepare_commands(self) -> list[GattWrite]:
        """Writes before start_commands() that let the driver learn the watch's capabilities."""
        return []

    @abstractmethod
    def start_commands(self) -> list[GattWrite]: ...

    @abstractmethod
    def stop_commands(self) -> list[GattWrite]: ...

    @abstractmethod
    def decode(self, char_uuid: str, data: bytes, received_at: float) -> list[ImuSample]:
        """Samples in one notification, in time order; raises only DecodeError."""

    def parse_response(self, data: bytes) -> object:
        """Parses a command response; raises DecodeError(status=...) for an error status."""
        raise DecodeError(f"{self.name} has no command responses")

    def reset(self) -> None:
        """Forget per-connection stream state (sequence numbers, previous timestamps)."""
        for timeline in self._timelines.values():
            timeline.reset()

    def clock_jumps(self) -> int:
        """How often a backwards watch clock forced a re-anchored timeline."""
        return sum(t.jumps for t in self._timelines.values())

    def _timeline(self, sensor: str) -> Timeline:
        return self._timelines.setdefault(sensor, Timeline())

    def _emit(self, sensor: Sensor, times: Sequence[float], values: Sequence[Sequence[float]]) -> list[ImuSample]:
        """Samples for one sensor, with the timeline applied and finiteness checked."""
        if len(times) != len(values):
            raise DecodeError("timestamp/sample count mismatch")
        check_finite(times, "timestamp")
        xyzs = [(float(v[0]), float(v[1]), float(v[2])) for v in values]
        check_finite((c for xyz in xyzs for c in xyz), "sample value")
        period = 1.0 / self.native_rate_hz if self.native_rate_hz > 0 else 0.0
        placed = self._timeline(sensor).place(times, period)
        return [ImuSample(t, sensor, xyz) for t, xyz in zip(placed, xyzs, strict=True)]

    @staticmethod
    def _char(char_uuid: str) -> str:
        try:
            return normalize_uuid(char_uuid)
        except (ValueError, AttributeError, TypeError):
            raise DecodeError("malformed characteristic UUID") from None

    @staticmethod
    def _check_received_at(received_at: float) -> float:
        value = float(received_at)
        if not math.isfinite(value):
            raise DecodeError("received_at is not finite")
        return value


_REGISTRY: dict[str, type[WatchDriver]] = {}
_BUILTIN_MODULES = ("polar_pmd", "infinitime", "metawear", "l2mu_profile", "bangle")


def register(cls: type[WatchDriver]) -> type[WatchDriver]:
    """Class decorator: make a driver reachable through driver_by_name/pick_driver."""
    cls.service_uuids = tuple(normalize_uuid(u) for u in cls.service_uuids)
    cls.hint_service_uuids = tuple(normalize_uuid(u) for u in cls.hint_service_uuids)
    cls.notify_uuids = tuple(normalize_uuid(u) for u in cls.notify_uuids)
    cls.response_uuids = tuple(normalize_uuid(u) for u in cls.response_uuids)
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    # Imported lazily: the family modules import this one, so importing them here at module
    # level would be circular.
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def driver_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def driver_by_name(name: str) -> type[WatchDriver]:
    """polar, infinitime, metawear, bangle or l2mu."""
    _load_builtins()
    try:
        return _REGISTRY[name.strip().lower()]
    except KeyError:
        raise UnknownDriverError(f"unknown watch protocol {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def pick_driver(service_uuids: Iterable[str]) -> type[WatchDriver]:
    """The driver whose services best match the discovered ones (`--protocol auto`)."""
    _load_builtins()
    uuids = [normalize_uuid(u) for u in service_uuids]
    best: type[WatchDriver] | None = None
    best_score = 0
    for cls in _REGISTRY.values():  # registration order breaks ties
        score = cls.match_score(uuids)
        if score > best_score:
            best, best_score = cls, score
    if best is None:
        raise UnknownDriverError("no known watch protocol among the services " + ", ".join(uuids or ["(none)"]))
    return best
