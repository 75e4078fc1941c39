"""The install kit's parts: files packed into xz-compressed tar parts of at most a given size, each with
its sha256 (used by scripts/gpu_kit.py, which runs by its path and finds this module beside it)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

MB = 1_000_000


class PartTooLarge(Exception):
    """One file compresses to more than a part may hold."""


class Sized(Protocol):
    """A package as the planner sees it: its kept files and their compressed size guess."""

    files: list[str]

    def estimate(self) -> float: ...


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def compress(site: Path, files: Sequence[str], out: Path, level: int) -> int:
    """Write `files` (relative to `site`) into the xz-compressed tar `out`; returns its size."""
    with tarfile.open(out, "w:xz", preset=level) as tar:
        for rel in files:
            tar.add(site / rel, arcname=rel, recursive=False, filter=_tar_filter)
    return out.stat().st_size


def plan_parts(packages: Sequence[Sized], loose: Sequence[str], site: Path, limit: int) -> list[list[str]]:
    """Files grouped into parts of about `limit` compressed bytes at most, by each package's estimate,
    largest first (first fit); a package estimated over `limit` gets a part of its own, which
    `write_parts` splits if it really is too large (the estimate is deflate's size: xz does better)."""
    items = [(pkg.estimate(), list(pkg.files)) for pkg in packages if pkg.files]
    if loose:
        items.append((sum((site / r).lstat().st_size for r in loose) * 0.5, list(loose)))
    bins: list[tuple[float, list[str]]] = []
    for est, files in sorted(items, key=lambda item: -item[0]):
        for i, (used, content) in enumerate(bins):
            if used + est <= limit:
                bins[i] = (used + est, content + files)
                break
        else:
            bins.append((est, list(files)))
    return [files for _, files in bins]


def _halves(site: Path, files: Sequence[str]) -> list[list[str]]:
    """`files` in two non-empty groups of about equal unpacked bytes, in their order."""
    sizes = [(site / rel).lstat().st_size for rel in files]
    half, running, cut = sum(sizes) / 2, 0, 1
    for i, size in enumerate(sizes):
        running += size
        if running >= half:
            cut = i + 1
            break
    cut = min(max(cut, 1), len(files) - 1)
    return [list(files[:cut]), list(files[cut:])]


def write_parts(
    site: Path, groups: list[list[str]], out: Path, stem: str, limit: int, level: int
) -> list[dict]:
    """Compress each group into a part (in parallel); a part over `limit` is split in two and redone."""
    todo = [list(g) for g in groups if g]
    done: list[list[str]] = []
    sizes: dict[int, int] = {}
    workers = max(1, min(len(todo), os.cpu_count() or 1))
    scratch = out / ".parts"
    scratch.mkdir(exist_ok=True)
    while todo:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            start = len(done)
            done += todo
            futures = {
                pool.submit(compress, site, files, scratch / f"{start + i}.tar.xz", level): start + i
                for i, files in enumerate(todo)
            }
            todo = []
            for future in concurrent.futures.as_completed(futures):
                sizes[futures[future]] = future.result()
        for index in [i for i in range(len(done)) if sizes.get(i, 0) > limit and done[i]]:
            files = done[index]
            if len(files) == 1:
                raise PartTooLarge(
                    f"{files[0]} alone compresses to {sizes[index] / MB:.1f} MB: raise KIT_PART_MB"
                )
            todo += _halves(site, files)
            done[index] = []
            (scratch / f"{index}.tar.xz").unlink()
    parts = []
    for number, (index, files) in enumerate((i, f) for i, f in enumerate(done) if f):
        path = out / f"{stem}.part{number + 1:02d}.tar.xz"
        (scratch / f"{index}.tar.xz").replace(path)
        parts.append({"file": path.name, "files": files})
    shutil.rmtree(scratch)
    return parts


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
