"""A results bundle: what `python -m workers run` writes where there is no Ray or MLflow.

    DIR/records.jsonl                 one Record per line (params, metrics, tags), no artifacts inline
    DIR/artifacts/<job key>/<name>    each record's artifacts, one small text file each
    DIR/shared/<digest>/<name>        an artifact that repeats verbatim across jobs (a schedule's
                                      source, `SHARED`), stored once by content; the line's "shared"
                                      field maps its name to the digest
    DIR/manifest.json                 only in a bundle exported from MLflow: its experiment, runs...

A record's line is appended (flushed and fsynced) only after its artifacts are on disk, so a line
always has its files. A key may appear more than once (`--rerun`): the last line wins.
`read_bundle` reassembles full Records for `orchestrator.ingest`, shared artifacts included.

A bundle exported from MLflow (`orchestrator.export`) can hold several measurements of one key (the
same job measured by two sweeps, or on two GPUs of a node): each such line carries a "measurement"
field (an id of its own) and its artifacts are under `artifacts/<job key>_<measurement>/`; lines are
then told apart by (key, measurement), and the last line of each wins.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from workers.schema import Record

RECORDS = "records.jsonl"
MANIFEST = "manifest.json"  # a bundle exported from MLflow: where its records came from (orchestrator.export)
ARTIFACTS = "artifacts"
SHARED_DIR = "shared"
SHARED = frozenset({"schedule.py"})  # artifacts that repeat verbatim across a bundle's jobs
_UNSAFE = re.compile(r"[^\w.\-]")
log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle that cannot be read: missing, or a malformed line that is not a truncated last one."""


def artifact_dir(bundle: Path, key: str, measurement: str | None = None) -> Path:
    """Folder of one record's artifacts (the key with anything but letters, digits, . _ - replaced),
    `<key>_<measurement>` for one of several measurements of the key."""
    safe = _UNSAFE.sub("_", key if measurement is None else f"{key}_{measurement}")
    if safe in ("", ".", ".."):
        raise BundleError(f"record key {key!r} cannot name a folder")
    return Path(bundle) / ARTIFACTS / safe


def _artifact_path(folder: Path, name: str) -> Path:
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"artifact name {name!r} must be a relative path without '..'")
    return folder.joinpath(*(_UNSAFE.sub("_", p) for p in parts))


_DIGEST = re.compile(r"[0-9a-f]{16}")
_MEASUREMENT = re.compile(r"[\w.\-]{1,64}")


def _shared_path(bundle: Path, digest: str, name: str) -> Path:
    return _artifact_path(Path(bundle) / SHARED_DIR / digest, name)


def _write_shared(bundle: Path, name: str, text: str) -> str:
    """Store `text` once under its digest (written whole, then renamed) and return the digest."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = _shared_path(bundle, digest, name)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        part.write_text(text, encoding="utf-8")
        os.replace(part, path)  # a crash leaves no half-written file under the final name
    return digest


def append_record(bundle: Path, record: Record, measurement: str | None = None) -> None:
    """Write `record`'s artifacts (the `SHARED` ones once per content), then append its line to
    records.jsonl (flush + fsync). `measurement` names one of several measurements of the key kept
    side by side (an export from MLflow); without it, a line of the same key replaces the earlier."""
    bundle = Path(bundle)
    if measurement is not None and not _MEASUREMENT.fullmatch(measurement):
        raise BundleError(f"measurement {measurement!r} must be 1-64 letters, digits, . _ or -")
    folder = artifact_dir(bundle, record.key, measurement)
    if folder.is_dir():  # a re-run replaces the files of the earlier run of the same key
        shutil.rmtree(folder)
    shared: dict[str, str] = {}
    for name, text in record.artifacts.items():
        if name in SHARED:
            shared[name] = _write_shared(bundle, name, text)
            continue
        path = _artifact_path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    line = asdict(record)
    line.pop("artifacts")
    if shared:
        line["shared"] = shared
    if measurement is not None:
        line["measurement"] = measurement
    path = bundle / RECORDS
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # a line cut short by a crash must not swallow the next one
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(json.dumps(line, sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _records_path(source: Path) -> Path:
    """The records file of a bundle folder, or `source` itself when it is one (plain or gzipped)."""
    path = source / RECORDS if source.is_dir() else source
    if not path.is_file():
        raise BundleError(f"no {RECORDS} in {source}: not a results bundle")
    return path


def _read_lines(source: Path) -> list[tuple[Record, dict[str, str], str | None]]:
    """Each line's Record (without artifacts), its shared artifacts' digests and its measurement id."""
    path = _records_path(source)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    records = []
    for i, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise TypeError(f"a JSON {type(fields).__name__}, not an object")
            shared = fields.pop("shared", {})
            if not isinstance(shared, dict) or not all(
                isinstance(d, str) and _DIGEST.fullmatch(d) for d in shared.values()
            ):
                raise ValueError(f"'shared' must map artifact names to 16 hex digits, not {shared!r}")
            measurement = fields.pop("measurement", None)
            if measurement is not None and not (
                isinstance(measurement, str) and _MEASUREMENT.fullmatch(measurement)
            ):
                raise ValueError(f"'measurement' must be 1-64 letters, digits, . _ or -, not {measurement!r}")
            records.append((Record(**fields), shared, measurement))
        except (ValueError, TypeError) as exc:
            if not line.rstrip().endswith("}"):  # cut short by a crash mid-write: that job did not finish
                log.warning("%s:%d: skipping a truncated line", path, i)
                continue
            raise BundleError(f"{path}:{i}: not a record ({exc})") from exc
    return records


def read_records(source: str | os.PathLike[str]) -> list[Record]:
    """The Records of a bundle folder or of a records file alone (`records.jsonl`, or gzipped as
    `tuning/runs/*/records.jsonl.gz` keeps them), without artifacts, every line in order: what a
    search resumes from (`tune.resume`)."""
    return [record for record, _, _ in _read_lines(Path(source))]


def recorded_keys(bundle: Path) -> set[str]:
    """Keys of the records already in the bundle (empty when it has none yet)."""
    if not (Path(bundle) / RECORDS).is_file():
        return set()
    return {r.key for r, _, _ in _read_lines(bundle)}


def read_manifest(bundle: str | os.PathLike[str]) -> dict[str, object]:
    """The bundle's manifest.json (an export from MLflow: its experiment, runs, command), {} if none."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{path}: not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: a JSON {type(manifest).__name__}, not an object")
    return manifest


def read_bundle(bundle: str | os.PathLike[str]) -> list[Record]:
    """The bundle's Records with their artifacts, one per key and measurement (the last line of each
    wins), in order."""
    bundle = Path(bundle)
    if not bundle.is_dir():  # a records file alone has no artifacts to restore: read_records reads it
        raise BundleError(f"no {RECORDS} in {bundle}: not a results bundle")
    latest: dict[tuple[str, str | None], tuple[Record, dict[str, str]]] = {}
    for record, shared, measurement in _read_lines(bundle):
        latest.pop((record.key, measurement), None)  # keep the order of the last occurrence
        latest[(record.key, measurement)] = (record, shared)
    sources: dict[Path, str] = {}  # a shared file is read once, however many records name it
    for (_, measurement), (record, shared) in latest.items():
        folder = artifact_dir(bundle, record.key, measurement)
        if folder.is_dir():
            record.artifacts = {
                p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8", errors="replace")
                for p in sorted(folder.rglob("*"))
                if p.is_file()
            }
        for name, digest in shared.items():
            path = _shared_path(bundle, digest, name)
            if path not in sources:
                if not path.is_file():
                    raise BundleError(f"{bundle}: record {record.key!r} names {path}, which is missing")
                sources[path] = path.read_text(encoding="utf-8", errors="replace")
            record.artifacts[name] = sources[path]
    return [record for record, _ in latest.values()]
