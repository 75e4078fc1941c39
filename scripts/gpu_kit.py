"""The offline install kit for GPU nodes without a package index (`make gpu-kit`, scripts/install-kit.sh).

    python scripts/gpu_kit.py build --out DIR [--python 3.12] [--platform manylinux_2_28_x86_64]
                                    [--base scripts/kit/cuda-image-base.txt | none] [--part-mb 60] [--level 6]
    python scripts/gpu_kit.py check-base DIR/manifest.json     (on the node; scripts/install-kit.sh runs it)

`build` (on a machine that reaches a package index) resolves what the worker, a Ray head, the driver and
an MLflow server need (pyproject's pins of Halide, Ray, MLflow, Hydra and the rest, less what
NOT_CARRIED names) for a foreign Python and platform with pip's own resolver, takes away the packages
the node's image already has (the base list), installs the rest with `pip install --target` from wheels
only, leaves out the files scripts/kit/left-out.tsv names (each recorded with its reason), rewrites
the console scripts' shebangs to `/usr/bin/env python3`, and packs the folder into xz-compressed tar
parts of at most --part-mb each, with `manifest.json`: per part its sha256, size and packages; per
package its version, wheel, sizes and parts; the target; the left-outs; what it assumes of the base.

Pure-Python requirements published only as source (antlr4-python3-runtime 4.9.3, which Hydra pins)
are built into `py3-none-any` wheels here first: such a wheel serves every platform.

Not imported by kernels/, workers/ or orchestrator/: this is a build tool, run by its path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:  # `build` needs packaging; `check-base` runs on the node's Python, which may lack it
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ModuleNotFoundError:
    Requirement = None  # type: ignore[assignment,misc]

# The kit's parts (compressing, splitting, checksums) live beside this file; it always runs by its path,
# which puts scripts/ first on sys.path.
from kit_parts import PartTooLarge, plan_parts, sha256, write_parts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = ROOT / "scripts" / "kit" / "cuda-image-base.txt"
LEFT_OUT = ROOT / "scripts" / "kit" / "left-out.tsv"  # what no node uses: Strip rules
MANIFEST = "manifest.json"
EXIT_BAD_INPUT = 2
MB = 1_000_000
# pyproject dependencies a node needs: the worker (halide, numpy), the driver (hydra, rich, matplotlib for
# reports), Ray (head, workers, driver) and MLflow (client and server).
NOT_CARRIED = {
    "tensorflow": "a baseline only: its variants are recorded `skipped` where it is absent; a session that "
    "wants it on a GPU node adds it with --extra (docs/evidence/tensorflow-gpu.md: 2.20 with CUDA 12's "
    "runtime, cuBLAS and ptxas, about 1 GB of kit)",
}


@dataclass(frozen=True)
class Strip:
    """Files left out of the kit: `pattern` is an fnmatch pattern on paths relative to the kit's site
    folder (`*` also matches `/`), applied to the files of `package` (`*`: any package)."""

    package: str
    pattern: str
    reason: str


def read_strip(path: Path = LEFT_OUT) -> list[Strip]:
    """The rules of scripts/kit/left-out.tsv: package, pattern, reason (tab-separated; # comments)."""
    rules = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, pattern, reason = line.split("\t")
            rules.append(Strip(package, pattern, reason))
    return rules


_T0 = time.monotonic()


def _say(message: str) -> None:
    """A progress line on stderr, with the seconds since the start."""
    print(f"[{time.monotonic() - _T0:5.0f} s] {message}", file=sys.stderr, flush=True)


class KitError(Exception):
    """A kit that cannot be built or checked: reported as one line, exit code 2."""


# --- the target ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """The Python version and platform the kit is for."""

    python: str  # X.Y
    platform: str  # a wheel platform tag, e.g. manylinux_2_28_x86_64

    def platforms(self) -> list[str]:
        """Every platform tag a node of `platform` runs: a manylinux_2_N tag also runs the wheels built
        for older glibc (2_N-1 ... 2_17) and the legacy manylinux2014/2010/1 names of those."""
        found = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", self.platform)
        if not found:
            return [self.platform]
        major, minor, arch = int(found[1]), int(found[2]), found[3]
        tags = (
            [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)] if major == 2 else [self.platform]
        )
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{arch}" for m, name in legacy.items() if major == 2 and minor >= m]
        return tags

    def pip_args(self) -> list[str]:
        """pip's options for installing wheels of this target, whatever Python runs pip."""
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        for tag in self.platforms():
            args += ["--platform", tag]
        return args

    def environment(self) -> dict[str, str]:
        """Marker environment of the target (for requirements' `; python_version < ...` markers)."""
        return {
            "python_version": self.python,
            "python_full_version": f"{self.python}.0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux" if "linux" in self.platform else sys.platform,
            "os_name": "posix",
            "platform_machine": self.platform.rsplit("_", 1)[-1] if "_" in self.platform else "",
        }


# --- what to carry -----------------------------------------------------------------------------------
def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """pyproject's dependencies with their pins, less NOT_CARRIED."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps]
    return [r for r in reqs if canonicalize_name(r.name) not in NOT_CARRIED]


def read_base(spec: str) -> dict[str, str]:
    """The base list: canonical name → version ('' = any) from a file of `name` or `name==version`
    lines (`pip list --format=freeze` output works); `none` → empty (a bare Python)."""
    if spec == "none":
        return {}
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as exc:
        raise KitError(
            f"cannot read the base list {path}: {exc.strerror or exc} (KIT_BASE=none for a bare Python)"
        ) from None
    base = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            base[canonicalize_name(name.strip())] = version.strip()
    return base


# --- pip -----------------------------------------------------------------------------------------------
def _pip(args: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.splitlines()
        tail = [ln for ln in lines if ln.startswith("ERROR")] or lines[-3:]
        raise KitError(f"{what} failed: {' '.join(tail)[:600]}")
    return done


def _unbuildable(stderr: str) -> str | None:
    found = re.search(r"No matching distribution found for (\S+)", stderr)
    return found[1] if found else None


def resolve(reqs: Sequence[Requirement], target: Target, work: Path) -> list[dict]:
    """The full dependency closure for `target`, as pip's installation report entries. A requirement with
    no wheel is built here once (`pip wheel`) and accepted only as a pure-Python wheel."""
    built = work / "built"
    built.mkdir(exist_ok=True)
    report = work / "report.json"
    for _ in range(8):
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run", "--quiet",
               "--ignore-installed", "--report", str(report), "--target", str(work / "dry"),
               "--find-links", str(built), *target.pip_args(), *map(str, reqs)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return json.loads(report.read_text())["install"]
        missing = _unbuildable(done.stderr)
        if missing is None:
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
            raise KitError(f"pip could not resolve the kit for {target}: {' '.join(errors)[:600]}")
        before = set(built.iterdir())
        _pip(["wheel", "--no-deps", "--quiet", "-w", str(built), missing], f"building a wheel of {missing}")
        new = [p for p in set(built.iterdir()) - before if p.suffix == ".whl"]
        if not new or not all(p.name.endswith("-none-any.whl") for p in new):
            raise KitError(
                f"{missing} has no wheel for Python {target.python} on {target.platform}, and its source "
                "builds a platform wheel here, which would not run there"
            )
    raise KitError("pip kept asking for wheels that are not published; giving up after 8 builds")


# --- the kit's files -------------------------------------------------------------------------------------
@dataclass
class Package:
    """One carried distribution and what became of its files."""

    name: str  # canonical
    version: str
    requested: bool
    wheel: str = ""
    wheel_sha256: str = ""
    wheel_bytes: int = 0
    installed_bytes: int = 0
    files: list[str] = field(default_factory=list)  # kept, relative to the site folder
    kept_bytes: int = 0
    parts: list[str] = field(default_factory=list)

    def estimate(self) -> float:
        """Compressed size guess: the wheel's (deflate) size scaled to the files kept; xz does better."""
        if not self.installed_bytes:
            return float(self.kept_bytes)
        return self.wheel_bytes * self.kept_bytes / self.installed_bytes


def owners(site: Path) -> dict[str, str]:
    """Relative path → canonical name of the distribution whose RECORD lists it."""
    found = {}
    for record in site.glob("*.dist-info/RECORD"):
        meta = record.parent / "METADATA"
        name = next(
            (ln.split(":", 1)[1].strip() for ln in meta.read_text(errors="replace").splitlines()
             if ln.startswith("Name:")), record.parent.name.split("-")[0],
        )  # fmt: skip
        for row in record.read_text().splitlines():
            path = row.rsplit(",", 2)[0]
            while path.startswith("../"):  # console scripts: ../../bin/x under --target
                path = path[3:]
            found[path] = canonicalize_name(name)
    return found


def strip(site: Path, owner: dict[str, str], rules: Iterable[Strip]) -> list[dict]:
    """Delete what `rules` match; returns, per rule that matched: package, what, reason, files, bytes."""
    rules = list(rules)
    hits: dict[Strip, list[int]] = {}
    for path in sorted(p for p in site.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(site).as_posix()
        pkg = owner.get(rel, "-")
        rule = next(
            (r for r in rules if r.package in ("*", pkg) and fnmatch.fnmatchcase(rel, r.pattern)), None
        )
        if rule is not None:
            hits.setdefault(rule, [0, 0])
            hits[rule][0] += 1
            hits[rule][1] += path.lstat().st_size
            path.unlink()
    for folder in sorted((p for p in site.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    return [
        {"package": r.package, "what": r.pattern, "reason": r.reason, "files": n, "bytes": size}
        for r, (n, size) in hits.items()
    ]


def portable_scripts(site: Path) -> list[str]:
    """Point the console scripts in site/bin at `/usr/bin/env python3` instead of the building Python
    (pip writes its own interpreter's path); returns their names."""
    names = []
    for script in sorted((site / "bin").glob("*")) if (site / "bin").is_dir() else []:
        data = script.read_bytes()
        if data.startswith(b"#!/bin/sh\n'''exec' "):  # pip's form for interpreter paths too long for #!
            data = b"#!/usr/bin/env python3\n" + data.split(b"\n' '''\n", 1)[1]
        elif data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            data = b"#!/usr/bin/env python3\n" + data.split(b"\n", 1)[1]
        else:
            continue
        script.write_bytes(data)
        script.chmod(0o755)
        names.append(script.name)
    return names


# --- build ---------------------------------------------------------------------------------------------
def requires_of_base(
    entries: Sequence[dict], carried: set[str], base: dict[str, str], target: Target, project: Sequence = ()
) -> dict[str, list[str]]:
    """Base package → what the project's own requirements (`project`) and the carried packages (pip
    report `entries`) require of it, as `who: requirement` strings; markers evaluated for the target,
    with each package's requested extras."""
    needs: dict[str, set[str]] = {}
    for req in project:
        if canonicalize_name(req.name) in base:
            needs.setdefault(canonicalize_name(req.name), set()).add(f"dsconv-lab: {req.name}{req.specifier}")
    for entry in entries:
        meta = entry["metadata"]
        if canonicalize_name(meta["name"]) not in carried:
            continue
        extras = {""} | set(entry.get("requested_extras") or [])
        for text in meta.get("requires_dist") or []:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            if name not in base:
                continue
            marker: Marker | None = req.marker
            if marker and not any(marker.evaluate({**target.environment(), "extra": e}) for e in extras):
                continue
            needs.setdefault(name, set()).add(f"{meta['name']}: {req.name}{req.specifier or ''}")
    return {name: sorted(v) for name, v in sorted(needs.items())}


def extra_requirements(specs: Iterable[str]) -> list[Requirement]:
    """Requirements a session adds to the project's (`--extra`, e.g. `tensorflow[and-cuda]==2.20.0`)."""
    from packaging.requirements import InvalidRequirement

    reqs = []
    for spec in specs:
        try:
            reqs.append(Requirement(spec))
        except InvalidRequirement as exc:
            why = str(exc).splitlines()[0]
            raise KitError(f"--extra {spec!r} is not a requirement (NAME[extras]==VERSION): {why}") from None
    return reqs


def build(
    out: Path,
    target: Target,
    base_spec: str,
    part_mb: float,
    level: int,
    command: str = "",
    extra: Sequence[str] = (),
) -> dict:
    """Build the kit into `out` (emptied first); returns the manifest, also written to out/manifest.json.
    `extra`: requirements beyond the project's (a framework one session needs on the node)."""
    if Requirement is None:
        raise KitError("building a kit needs the `packaging` module: run it with the project's .venv")
    base = read_base(base_spec)
    reqs = project_requirements() + extra_requirements(extra)
    limit = int(part_mb * MB)
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise KitError(f"{out} is not empty and holds no kit (no {MANIFEST}): choose an empty folder")
        shutil.rmtree(out)  # an earlier kit, and where install-kit.sh unpacked it by default
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gpu-kit-") as tmp:
        work = Path(tmp)
        _say(f"resolving {', '.join(map(str, reqs))} for Python {target.python} on {target.platform}")
        entries = resolve(reqs, target, work)
        closure = {canonicalize_name(e["metadata"]["name"]): e for e in entries}
        carried = {n for n in closure if n not in base}
        packages = {
            n: Package(n, closure[n]["metadata"]["version"], bool(closure[n].get("requested")))
            for n in sorted(carried)
        }
        _say(f"{len(closure)} packages in the closure, {len(carried)} to carry; downloading their wheels")
        pins = [f"{n}=={p.version}" for n, p in packages.items()]
        wheels = _download(packages, pins, target, work)
        site = work / "site"
        _say("installing them (pip install --target), leaving out what no node uses")
        _pip(["install", "--no-deps", "--no-index", "--no-compile", "--quiet", "--find-links", str(wheels),
              "--target", str(site), *target.pip_args(), *pins], "installing the wheels")  # fmt: skip
        owner = owners(site)
        for path in (p for p in site.rglob("*") if p.is_file()):
            pkg = packages.get(owner.get(path.relative_to(site).as_posix(), ""))
            if pkg:
                pkg.installed_bytes += path.lstat().st_size
        left_out = [
            {"package": n, "what": "the whole package", "reason": why, "files": 0, "bytes": 0}
            for n, why in NOT_CARRIED.items()
        ]
        left_out += strip(site, owner, read_strip())
        scripts = portable_scripts(site)
        loose = []
        for path in sorted(p for p in site.rglob("*") if p.is_file() or p.is_symlink()):
            rel = path.relative_to(site).as_posix()
            pkg = packages.get(owner.get(rel, ""))
            if pkg is None:
                loose.append(rel)
            else:
                pkg.files.append(rel)
                pkg.kept_bytes += path.lstat().st_size
        stem = f"dsconv-kit-cp{target.python.replace('.', '')}-{target.platform}"
        groups = plan_parts(sorted(packages.values(), key=lambda p: -p.estimate()), loose, site, limit)
        _say(f"compressing {len(groups)} part(s) with xz -{level}")
        try:
            parts = write_parts(site, groups, out, stem, limit, level)
        except PartTooLarge as exc:
            raise KitError(str(exc)) from None
        where = {rel: part["file"] for part in parts for rel in part["files"]}
        for pkg in packages.values():
            pkg.parts = sorted({where[rel] for rel in pkg.files})
        unpacked = sum(p.lstat().st_size for p in site.rglob("*") if p.is_file())
    manifest = {
        "kit": "dsconv-lab GPU-node kit: python scripts/gpu_kit.py; install with scripts/install-kit.sh",
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "target": {**asdict(target), "implementation": "cp", "platforms_accepted": target.platforms()},
        "compression": f"tar, xz preset {level}",
        "part_limit_bytes": limit,
        "total_bytes": sum((out / p["file"]).stat().st_size for p in parts),
        "unpacked_bytes": unpacked,
        "parts": [
            {
                "file": p["file"],
                "sha256": sha256(out / p["file"]),
                "bytes": (out / p["file"]).stat().st_size,
                "files": len(p["files"]),
                "packages": sorted({owner.get(rel, "-") for rel in p["files"]}),
            }
            for p in parts
        ],
        "packages": [
            {k: v for k, v in asdict(p).items() if k != "files"}
            for p in sorted(packages.values(), key=lambda p: -p.kept_bytes)
        ],
        "console_scripts": [f"bin/{s}" for s in scripts],
        "left_out": left_out,
        "base": {
            "list": "none" if base_spec == "none" else _display(Path(base_spec)),
            "names": len(base),
            "assumed": requires_of_base(entries, carried, base, target, reqs),
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _download(packages: dict[str, Package], pins: Sequence[str], target: Target, work: Path) -> Path:
    """Download the wheels of `pins` for `target` into work/wheels; note each package's wheel."""
    wheels = work / "wheels"
    _pip(["download", "--no-deps", "--quiet", "-d", str(wheels), "--find-links", str(work / "built"),
          *target.pip_args(), *pins], "downloading the wheels")  # fmt: skip
    for wheel in wheels.glob("*.whl"):
        pkg = packages.get(canonicalize_name(wheel.name.split("-")[0]))
        if pkg is not None:
            pkg.wheel, pkg.wheel_bytes, pkg.wheel_sha256 = wheel.name, wheel.stat().st_size, sha256(wheel)
    return wheels


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def summary(manifest: dict) -> list[str]:
    """Lines that say what was built: parts, sizes, the largest packages, what was left out."""
    lines = [
        f"kit for Python {manifest['target']['python']} on {manifest['target']['platform']}: "
        f"{len(manifest['packages'])} packages, {manifest['total_bytes'] / MB:.1f} MB in "
        f"{len(manifest['parts'])} part(s) ({manifest['compression']}), "
        f"{manifest['unpacked_bytes'] / MB:.0f} MB unpacked; base: {manifest['base']['list']} "
        f"({manifest['base']['names']} names, "
        f"{len(manifest['base']['assumed'])} of them needed)"
    ]
    lines += [
        f"  {p['file']}  {p['bytes'] / MB:.1f} MB  {', '.join(p['packages'])}" for p in manifest["parts"]
    ]
    big = manifest["packages"][:6]
    lines.append(
        "  largest unpacked: " + ", ".join(f"{p['name']} {p['kept_bytes'] / MB:.0f} MB" for p in big)
    )
    cut = sum(e["bytes"] for e in manifest["left_out"])
    lines.append(
        f"  left out: {cut / MB:.0f} MB unpacked ({len(manifest['left_out'])} rules; see manifest.json)"
    )
    return lines


# --- on the node -------------------------------------------------------------------------------------------
def check_base(manifest_path: Path) -> list[str]:
    """Warning lines for base packages the kit needs that this Python lacks (one line for all) or has in a
    version its packages do not accept (one line each; needs the `packaging` module); empty when all is
    there."""
    manifest = json.loads(manifest_path.read_text())
    warnings, missing = [], []
    for name, needs in manifest["base"]["assumed"].items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        for need in needs if Requirement is not None else []:
            spec = SpecifierSet(str(Requirement(need.split(": ", 1)[1]).specifier))
            if spec and not spec.contains(Version(have), prereleases=True):
                warnings.append(f"warning: {need}, and this Python has {name} {have}")
    if missing:
        warnings.insert(
            0,
            f"warning: the kit assumes that this Python has {len(missing)} package(s) it lacks: "
            f"{', '.join(missing)} (a kit for a bare Python: make gpu-kit KIT_BASE=none)",
        )
    return warnings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_kit.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the kit (needs a package index)")
    b.add_argument("--out", required=True, type=Path, help="the kit's folder (emptied first)")
    b.add_argument("--python", default="3.12", help="the node's Python version, X.Y")
    b.add_argument("--platform", default="manylinux_2_28_x86_64", help="the node's wheel platform tag")
    b.add_argument("--base", default=str(DEFAULT_BASE), help="packages the node has (file), or none")
    b.add_argument("--part-mb", type=float, default=60, help="largest part, in MB (10^6 bytes)")
    b.add_argument("--level", type=int, default=6, choices=range(10), help="xz preset, 0-9")
    b.add_argument(
        "--extra", action="append", default=[], metavar="REQ",
        help="a requirement beyond the project's, e.g. 'tensorflow[and-cuda]==2.20.0' (repeatable)",
    )  # fmt: skip
    c = sub.add_parser("check-base", help="on the node: does this Python have what the kit assumes")
    c.add_argument("manifest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "check-base":
            for line in check_base(args.manifest):
                print(line, file=sys.stderr)
            return
        if not re.fullmatch(r"3\.\d+", args.python):
            raise KitError(f"--python must be a version like 3.12, got {args.python!r}")
        target = Target(args.python, args.platform)
        command = " ".join(["python scripts/gpu_kit.py", *(argv if argv is not None else sys.argv[1:])])
        manifest = build(args.out, target, args.base, args.part_mb, args.level, command, args.extra)
    except KitError as exc:
        print(f"gpu-kit: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    for line in summary(manifest):
        print(line)
    print(f"install on the node: scripts/install-kit.sh {args.out} [TARGET]")


if __name__ == "__main__":
    main()
