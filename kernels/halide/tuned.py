"""The tuning database (`tuning/db.json`), from which the `halide_tuned` variant (`variants`) builds.

The database keeps, per (shape, device model, Halide version), the best schedule of the family
(`family`) a search found, with its measured time, the command that found it and the date. `choose`
looks the job's shape and device up; a shape never tuned there falls back to the family's heuristic
(never to nothing), and the build says which in its `build.json` artifact (`"source": "db"` or
`"heuristic"`, with the reason) and in `tuned.json`.

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
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernels import host
from kernels.device import DeviceSpec
from kernels.halide import family
from kernels.halide.targets import halide_version
from kernels.layer import LayerShape

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DB = REPO_ROOT / "tuning" / "db.json"
DB_ENV = "DSCONV_TUNING_DB"  # another database file (tests, a GPU node's scratch copy)
DB_FORMAT = 1
SOURCES = ("db", "heuristic")


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
    """The device model in the key: a GPU's catalog model; the host CPU's model name and cores."""
    if device.is_gpu:
        return device.model
    return f"{host.cpu_model()} ({device.cores or host.available_cores()} cores)"


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


@dataclass(frozen=True)
class Choice:
    """The schedule `halide_tuned` builds for a job, and why."""

    params: family.Params
    source: str  # db | heuristic
    key: str
    reason: str
    entry: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "db_key": self.key,
            "reason": self.reason,
            "params": family.as_dict(self.params),
        }
        if self.entry:
            out["db_entry"] = {k: v for k, v in self.entry.items() if k != "params"}
        return out


def choose(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any] | None = None) -> Choice:
    """The database's schedule for (shape, device model, Halide version), else the family's heuristic."""
    path = db_path(options)
    key = entry_key(shape, device)
    try:
        entry = load(path)["entries"].get(key)
    except ValueError as exc:
        return Choice(family.heuristic(shape, device), "heuristic", key, str(exc))
    if entry is None:
        return Choice(family.heuristic(shape, device), "heuristic", key, f"no entry in {path}")
    try:
        params = family.from_options(entry.get("params"), shape, device)
    except ValueError as exc:  # the family changed since the entry was written
        return Choice(family.heuristic(shape, device), "heuristic", key, f"db entry unusable: {exc}")
    when = entry.get("date", "?")
    return Choice(params, "db", key, f"tuned {when}: {entry.get('time_ms')} ms", dict(entry))


def relatives(
    shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any] | None = None
) -> list[family.Params]:
    """The schedules the database keeps for `shape` and this Halide version on other device models of
    the same kind, fastest first, as parameters valid on `device` (entries the family rejects here are
    left out). A search seeds from them: GPUs of one generation favour similar tiles, so a tile another
    GPU kept is a strong start on the next one (docs/evidence/kernels.md, "relatives")."""
    try:
        entries = load(db_path(options))["entries"]
    except ValueError:
        return []
    prefix, own = f"{shape_key(shape)} | ", entry_key(shape, device)
    suffix = f" | halide {halide_version()}"
    kind = family.params_class(device).kind
    found = sorted(
        (e for k, e in entries.items() if k.startswith(prefix) and k.endswith(suffix) and k != own),
        key=lambda e: float(e.get("time_ms", float("inf"))),
    )
    out: list[family.Params] = []
    for params in (e.get("params") for e in found if e.get("kind") == kind):
        if not isinstance(params, Mapping):  # an entry without parameters seeds nothing
            continue
        try:
            q = family.from_options(params, shape, device)
        except ValueError:
            continue
        if q not in out:
            out.append(q)
    return out
