"""The tuning database (`tuning/db.json`), from which the `halide_tuned` variant (`variants`) builds.

The database keeps, per (shape, device model, Halide version), the best schedule a search found (a
parameter set of the family, `family`; or, where a short search on a miss found one of the named
schedules fastest, that schedule's name in `schedule`), with its measured time, how it was found
(`source`: a search's `evolve` / `random` strategy, or `quick`), the command or job that found it and
the date. `choose` looks the job's shape and device up; what `halide_tuned` does on a miss (the
heuristic, the cost model's ranking, or a short timed search) is `candidates`'s, and the build says
which in its `build.json` and `tuned.json` artifacts.

Entries are read defensively: an entry of another Halide version for the same shape and device, or one
that is not an object with a usable schedule (a corrupt entry), is skipped with a logged warning and
a reason the record keeps (`Lookup.skipped`), never an exception.

Keys: the shape's sizes (`1x56x56x128-128s1`, with `-nobias` / `-norelu` when those are off; the
catalog name is not part of it, so aliases share an entry), the device model (a GPU: the catalog's
model name; the host CPU: its model name and the cores the kernels use (`kernels.host`), since
the parallel grain depends on them) and the Halide version. The file is JSON, entries sorted by key,
written atomically under a lock, so two searches on one machine never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels import host
from kernels.device import DeviceSpec
from kernels.halide import family
from kernels.halide.names import FAMILY, MANUAL_SCHEDULES
from kernels.halide.targets import halide_version, host_vector
from kernels.layer import LayerShape

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DB = REPO_ROOT / "tuning" / "db.json"
DB_ENV = "DSCONV_TUNING_DB"  # another database file (tests, a GPU node's scratch copy)
DB_FORMAT = 1
SOURCES = ("db", "quick", "rank", "heuristic")  # where a halide_tuned build's schedule came from
ENTRY_SCHEDULES = (FAMILY, *MANUAL_SCHEDULES)  # what an entry's `schedule` may name (family: its params)
SHAPE_KEY = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)-(\d+)s(\d+)(-nobias)?(-norelu)?$")


def db_path(options: Mapping[str, Any] | None = None) -> Path:
    """options["tuning_db"], else $DSCONV_TUNING_DB, else the repository's tuning/db.json."""
    if options and options.get("tuning_db"):
        return Path(str(options["tuning_db"])).expanduser()
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    return DEFAULT_DB


def shape_key(shape: LayerShape) -> str:
    """The shape's sizes as a key: `NxHxWxC-COsS`, plus `-nobias` / `-norelu` when those are off."""
    key = f"{shape.n}x{shape.h}x{shape.w}x{shape.c}-{shape.co}s{shape.stride}"
    return key + ("" if shape.bias else "-nobias") + ("" if shape.relu else "-norelu")


def device_model(device: DeviceSpec) -> str:
    """The device model in the key: a GPU's catalog model; the host CPU's model name, the cores its kernels
    get and the fp32 lanes of its vectors (Halide's host target: 16 with AVX-512, 8 with AVX2). Virtual
    machines of one marketing name ("AMD EPYC") differ in vector width, which decides which schedules are
    valid and fast: each width keeps entries of its own, and the other's are candidates, refitted."""
    if device.is_gpu:
        return device.model
    lanes, _ = host_vector()
    return f"{host.cpu_model()} ({device.cores or host.available_cores()} cores, {lanes} fp32 lanes)"


def entry_key(shape: LayerShape, device: DeviceSpec, version: str | None = None) -> str:
    """`<shape key> | <device model> | halide <version>`: one database entry."""
    return f"{shape_key(shape)} | {device_model(device)} | halide {version or halide_version()}"


def load(path: Path) -> dict[str, Any]:
    """The database at `path` (an empty one when the file does not exist)."""
    if not path.exists():
        return {"format": DB_FORMAT, "entries": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"tuning database {path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise ValueError(f"tuning database {path} has no 'entries' object")
    if data.get("format") != DB_FORMAT:
        raise ValueError(f"tuning database {path} has format {data.get('format')!r}, expected {DB_FORMAT}")
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def store(path: Path, key: str, entry: Mapping[str, Any], keep_better: bool = True) -> bool:
    """Write `entry` under `key` (atomically, under a lock). With `keep_better`, an existing entry with
    a lower `time_ms` is kept. Returns whether the entry was written."""
    with _locked(path):
        data = load(path)
        old = data["entries"].get(key)
        if keep_better and old and float(old.get("time_ms", float("inf"))) <= float(entry["time_ms"]):
            return False
        data["entries"][key] = dict(entry)
        data["entries"] = dict(sorted(data["entries"].items()))
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        os.replace(tmp, path)
        return True


def parse_key(key: str) -> tuple[LayerShape, str, str] | None:
    """(shape, device model, Halide version) of an entry key, or None when it is not one."""
    parts = key.rsplit(" | ", 2)
    if len(parts) != 3 or not parts[2].startswith("halide "):
        return None
    m = SHAPE_KEY.match(parts[0])
    if m is None:
        return None
    n, h, w, c, co, stride = (int(v) for v in m.groups()[:6])
    if stride not in (1, 2) or min(n, h, w, c, co) <= 0:
        return None
    shape = LayerShape(parts[0], n, h, w, c, co, stride, bias=m.group(7) is None, relu=m.group(8) is None)
    return shape, parts[1], parts[2][len("halide ") :]


def entry_problem(entry: Any) -> str | None:
    """Why `entry` is not a usable database entry (one line), or None: an object with a numeric
    `time_ms` and a `schedule` from ENTRY_SCHEDULES, with `params` an object where it is the family's."""
    if not isinstance(entry, Mapping):
        return f"not an object ({type(entry).__name__})"
    schedule = entry.get("schedule", FAMILY)
    if schedule not in ENTRY_SCHEDULES:
        return f"schedule {schedule!r} is not one of {', '.join(ENTRY_SCHEDULES)}"
    if schedule == FAMILY and not isinstance(entry.get("params"), Mapping):
        return "no parameters"
    try:
        time_ms = float(entry.get("time_ms"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"time_ms {entry.get('time_ms')!r} is not a number"
    if not math.isfinite(time_ms) or time_ms <= 0:
        return f"time_ms {time_ms!r} is not a positive time"
    return None


@dataclass(frozen=True)
class Lookup:
    """The database as one build sees it: its usable entries (key -> entry; none when the file is
    unreadable) and what was skipped, each a one-line reason also logged as a warning."""

    path: Path
    entries: dict[str, dict[str, Any]]
    skipped: tuple[str, ...] = ()
    error: str | None = None  # the file as a whole is unreadable


def lookup(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any] | None = None) -> Lookup:
    """Read the database for a build on (shape, device): its usable entries, skipping (with a logged
    reason) corrupt entries and the entries of another Halide version for this shape and device."""
    path = db_path(options)
    try:
        raw = load(path)["entries"]
    except ValueError as exc:
        log.warning("tuning database skipped: %s", exc)
        return Lookup(path, {}, (f"database: {exc}",), str(exc))
    own_shape, own_model, version = shape_key(shape), device_model(device), halide_version()
    entries: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for key, entry in raw.items():
        parsed = parse_key(str(key))
        problem = "unreadable key" if parsed is None else entry_problem(entry)
        if parsed is not None and problem is None and parsed[2] != version:
            if parsed[0].name == own_shape and parsed[1] == own_model:
                problem = f"written by halide {parsed[2]}, this is halide {version}"
            else:
                continue  # another version's entry for another pair: not this build's concern
        if problem is not None:
            skipped.append(f"{key}: {problem}")
            log.warning("tuning database entry skipped: %s: %s", key, problem)
            continue
        entries[str(key)] = dict(entry)
    return Lookup(path, entries, tuple(skipped))


@dataclass(frozen=True)
class Choice:
    """The schedule `halide_tuned` builds for a job, and why: a family parameter set (`params`), or a
    named schedule (`schedule`, with `params` None)."""

    params: family.Params | None
    source: str  # one of SOURCES
    key: str
    reason: str
    entry: dict[str, Any] | None = None
    schedule: str = FAMILY
    skipped: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "db_key": self.key,
            "reason": self.reason,
            "schedule": self.schedule,
            "params": family.as_dict(self.params) if self.params is not None else None,
        }
        if self.entry:
            out["db_entry"] = {k: v for k, v in self.entry.items() if k != "params"}
        if self.skipped:
            out["skipped"] = list(self.skipped)
        return out


def from_entry(
    entry: Mapping[str, Any], shape: LayerShape, device: DeviceSpec
) -> tuple[str, family.Params | None]:
    """(schedule, parameters) of a usable entry for (shape, device): a named schedule's name and None, or
    the family's parameters read back as themselves (raises family.ParamsError where the family rejects
    them for this shape and device)."""
    schedule = str(entry.get("schedule", FAMILY))
    if schedule != FAMILY:
        return schedule, None
    return FAMILY, family.from_options(entry.get("params"), shape, device)


def choose(
    shape: LayerShape,
    device: DeviceSpec,
    options: Mapping[str, Any] | None = None,
    found: Lookup | None = None,
) -> Choice:
    """The database's schedule for (shape, device model, Halide version), else the family's heuristic
    (`found`: the database as `lookup` read it, when the caller has it)."""
    found = found or lookup(shape, device, options)
    key = entry_key(shape, device)
    skipped = found.skipped
    if found.error is not None:
        return Choice(family.heuristic(shape, device), "heuristic", key, found.error, skipped=skipped)
    entry = found.entries.get(key)
    if entry is None:
        return Choice(
            family.heuristic(shape, device), "heuristic", key, f"no entry in {found.path}", skipped=skipped
        )
    try:
        schedule, params = from_entry(entry, shape, device)
    except ValueError as exc:  # the family changed since the entry was written
        reason = f"db entry unusable: {exc}"
        log.warning("tuning database entry skipped: %s: %s", key, exc)
        return Choice(
            family.heuristic(shape, device), "heuristic", key, reason, skipped=(*skipped, f"{key}: {exc}")
        )
    when = entry.get("date", "?")
    reason = f"tuned {when}: {entry.get('time_ms')} ms"
    return Choice(params, "db", key, reason, dict(entry), schedule, skipped)


def relatives(
    shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any] | None = None
) -> list[family.Params]:
    """The family schedules the database keeps for `shape` and this Halide version on other device models
    of the same kind, fastest first, as parameters valid on `device` (entries the family rejects here,
    named schedules' entries and corrupt ones are left out). A search seeds from them: GPUs of one
    generation favour similar tiles, so a tile another GPU kept is a strong start on the next one
    (docs/evidence/kernels.md, "relatives")."""
    found = lookup(shape, device, options)
    prefix, own = f"{shape_key(shape)} | ", entry_key(shape, device)
    suffix = f" | halide {halide_version()}"
    kind = family.params_class(device).kind
    matching = (
        e
        for k, e in found.entries.items()
        if k.startswith(prefix) and k.endswith(suffix) and k != own and e.get("schedule", FAMILY) == FAMILY
    )
    out: list[family.Params] = []
    for e in sorted(matching, key=lambda e: float(e["time_ms"])):
        if e.get("kind") != kind:
            continue
        try:
            q = family.from_options(e["params"], shape, device)
        except ValueError:
            continue
        if q not in out:
            out.append(q)
    return out
