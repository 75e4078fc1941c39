"""A results bundle: what `python -m workers run` writes where there is no Ray or MLflow.

    DIR/records.jsonl                 one Record per line (params, metrics, tags), no artifacts inline
    DIR/artifacts/<job key>/<name>    each record's artifacts, one small text file each
    DIR/shared/<digest>/<name>        an artifact that repeats verbatim across jobs (a schedule's
                                      source, `SHARED`), stored once by content; the line's "shared"
                                      field maps its name to the digest
    DIR/manifest.json                 where the records came from: an export from MLflow writes one
                                      (its experiment, runs...); a published bundle under results/ has
                                      one too (`orchestrator.results manifest`: command, commit, date...)

A shared artifact may also live once for a whole tree of bundles: `TREE/sources/<digest>/<name>`
(`pool_sources` moves every bundle's shared/ there, so that results/ keeps one copy of a schedule's
source for all its bundles). Reading resolves a digest in the bundle's own shared/ first, then in the
`sources/` folder of the nearest enclosing folder that has the file, checking its content against the
digest. A folder is a bundle when it holds records.jsonl; `find_bundles` finds them at any depth.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from workers.schema import Record

RECORDS = "records.jsonl"
MANIFEST = "manifest.json"  # a bundle exported from MLflow: where its records came from (orchestrator.export)
ARTIFACTS = "artifacts"
SHARED_DIR = "shared"
SHARED = frozenset({"schedule.py"})  # artifacts that repeat verbatim across a bundle's jobs
SOURCES_DIR = "sources"  # TREE/sources/<digest>/<name>: shared artifacts stored once for a tree of bundles
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


def digest_of(text: str) -> str:
    """The 16 hex digits that name a shared artifact: the start of its UTF-8 text's sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _write_shared(bundle: Path, name: str, text: str) -> str:
    """Store `text` once under its digest (written whole, then renamed) and return the digest."""
    digest = digest_of(text)
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
            path = _find_shared(bundle, digest, name, record.key)
            if path not in sources:
                sources[path] = _read_shared(path, digest)
            record.artifacts[name] = sources[path]
    return [record for record, _ in latest.values()]


def _find_shared(bundle: Path, digest: str, name: str, key: str) -> Path:
    """Where a shared artifact is: the bundle's shared/, else the `sources/` of the nearest enclosing
    folder that holds it; BundleError naming both places when neither does."""
    own = _shared_path(bundle, digest, name)
    if own.is_file():
        return own
    for folder in bundle.resolve().parents:
        pooled = _artifact_path(folder / SOURCES_DIR / digest, name)
        if pooled.is_file():
            return pooled
    raise BundleError(
        f"{bundle}: record {key!r} names {own}, which is missing (and no enclosing folder has "
        f"{SOURCES_DIR}/{digest}/{name})"
    )


def _read_shared(path: Path, digest: str) -> str:
    """A shared artifact's text, checked against the digest that names it."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if digest_of(text) != digest:
        raise BundleError(f"{path}: its content does not match its digest {digest} (edited or corrupt)")
    return text


def is_bundle(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` is a results bundle: a folder holding records.jsonl."""
    return (Path(folder) / RECORDS).is_file()


def find_bundles(root: str | os.PathLike[str]) -> list[Path]:
    """The bundles at `root` or below it, at any depth, in path order: `root` itself when it is one;
    a bundle's own folders are not searched. BundleError when there is none."""
    root = Path(root)
    if is_bundle(root):
        return [root]
    if not root.is_dir():
        raise BundleError(f"{root} is not a folder; give a results bundle (a folder with {RECORDS}) or a "
                          "folder that holds bundles")  # fmt: skip
    found: list[Path] = []
    for here, folders, _ in os.walk(root):
        if is_bundle(here):
            found.append(Path(here))
            folders.clear()  # artifacts/, shared/, logs/ of a bundle hold no bundles
            continue
        folders[:] = sorted(f for f in folders if not f.startswith(".") and f != SOURCES_DIR)
    if not found:
        raise BundleError(f"no results bundle (a folder with {RECORDS}) in {root} or below it")
    return sorted(found)


def bundles_in(
    paths: Sequence[str | os.PathLike[str]], say: Callable[[str], None] = lambda line: None
) -> list[Path]:
    """The bundles the paths name, each once, in order: a bundle as itself, another folder as every
    bundle at any depth below it (`say` gets one line with how many); BundleError for a path with none."""
    found: list[Path] = []
    for path in map(Path, paths):
        bundles = find_bundles(path)
        if not is_bundle(path):
            say(f"{path}: {len(bundles)} bundle(s) found")
        found.extend(b for b in bundles if b not in found)
    return found


def pool_sources(tree: str | os.PathLike[str]) -> tuple[int, int]:
    """Move the shared artifacts of every bundle under `tree` into `tree/sources/`, once per digest
    (an identical copy already there is dropped), and remove the emptied shared/ folders; a copy whose
    content does not match its digest stops it (BundleError) before anything moves. Returns (files
    moved, copies dropped)."""
    tree = Path(tree)
    files = [
        (path, path.relative_to(bundle / SHARED_DIR))
        for bundle in find_bundles(tree)
        for path in sorted((bundle / SHARED_DIR).rglob("*"))
        if path.is_file()
    ]
    for path, rel in files:  # check every copy first: a bad one stops the move before it starts
        _read_shared(path, rel.parts[0])
    moved = dropped = 0
    for path, rel in files:
        target = tree / SOURCES_DIR / rel
        if target.is_file():
            if target.read_bytes() != path.read_bytes():
                raise BundleError(f"{path} and {target} have one digest and differ")
            path.unlink()
            dropped += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)
            moved += 1
    for bundle in find_bundles(tree):
        shared = bundle / SHARED_DIR
        if shared.is_dir() and not any(p.is_file() for p in shared.rglob("*")):
            shutil.rmtree(shared)
    return moved, dropped
