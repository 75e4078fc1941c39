"""A persistent, on-disk compile cache of CPU pipelines, so that a repeat run never recompiles.

A CPU pipeline is compiled ahead of time (`Pipeline.compile_to`: an object file, Halide's Python
extension glue and the lowered statement), linked with the system C++ compiler into a Python
extension module, and stored with its artifacts under a key made of everything that changes the
generated code: the Halide version, the target string, the schedule name and its parameters, the
shape, the host's thread count, the Python ABI and a hash of every source file the build imports
(`source_files`: computed from the import statements, so a new helper module is never left out).
For autoscheduled variants the (slow) search is cached with the code.

A hit loads the module (milliseconds). Entries are written to a temporary directory and renamed
into place, so two processes building the same key both succeed and one entry survives.
Where no C++ compiler or Python headers exist, `toolchain_problem` says why and callers fall back
to JIT compilation (every build then compiles).

CUDA pipelines are JIT-compiled per process instead (see `builder`): the generated extension
copies buffers between host and device on every call, and GPU nodes run one long-lived worker.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import halide as hl

from kernels.halide.targets import halide_version

CACHE_FORMAT = 1  # bump when the entry layout changes
ENV_VAR = "DSCONV_CACHE_DIR"
DEFAULT_DIR = Path("~/.cache/dsconv/halide")
FN_NAME = "dsconv"
META = "meta.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("kernels",)  # the packages whose sources a build can import


def cache_root(options: Mapping[str, Any]) -> Path:
    """options["cache_dir"], else $DSCONV_CACHE_DIR/halide (the project's cache root, shared with
    the host measurements of `workers.hostinfo`), else ~/.cache/dsconv/halide."""
    if options.get("cache_dir"):
        return Path(options["cache_dir"]).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser() / "halide"
    return DEFAULT_DIR.expanduser()


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short, stable digest of the key's parts (JSON with sorted keys)."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def source_files(modules: Iterable[str], root: Path = REPO_ROOT) -> list[Path]:
    """The source files of `modules` and of every project module they import, transitively: each
    module's package `__init__` (run on import) and the project modules named by its import statements,
    those inside functions included. Read from the files under `root`, not from what this process has
    imported, so the answer is the same in every process and needs no import."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(module, root)
        if path is None:
            raise ValueError(f"no source for project module {module!r} under {root}")
        seen[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages
        stat = path.stat()
        todo += _project_imports(module, path, root, stat.st_mtime_ns, stat.st_size)
    return [seen[m] for m in sorted(seen)]


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of project module `module` under `root` (a package's `__init__.py`), or None."""
    base = root.joinpath(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=256)
def _project_imports(module: str, path: Path, root: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The project modules `module` (at `path`) imports: for `from package import name`, the module
    `package.name` where there is one, else `package`. Parsed once per version of the file (its
    modification time and size are part of the cache's key): a search keys many builds in one process."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(sub if module_file(sub, root) else base)
    return tuple(m for m in found if m.split(".")[0] in PROJECT_PACKAGES)


def source_digest(files: Iterable[Path], root: Path = REPO_ROOT) -> str:
    """Hash of the files' paths (relative to `root`) and contents: any edit, added or renamed module
    among them makes a new key."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def toolchain_problem() -> str | None:
    """Why ahead-of-time compilation cannot work here (no compiler, no Python headers), or None."""
    if _compiler() is None:
        return "no C++ compiler on PATH (set CXX)"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").exists():
        return f"no Python headers at {include}"
    if not (Path(hl.install_dir()) / "include" / "HalideRuntime.h").exists():
        return "the Halide wheel has no include/HalideRuntime.h"
    return None


@dataclass
class Entry:
    """A compiled pipeline from the cache: its entry point, artifacts and how it was obtained."""

    function: Callable[..., None]
    artifacts: dict[str, str]
    meta: dict[str, Any]
    hit: bool
    load_s: float
    path: Path


# Python binds each extension module's runtime to itself and exports only PyInit_*: several cached
# modules in one process then each keep their own Halide runtime without interposing symbols.
_VERSION_SCRIPT = "{ global: PyInit_*; local: *; };\n"


def _link(workdir: Path, module: str) -> Path:
    """Link the object and the extension glue into an importable module."""
    out = workdir / f"{module}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    script = workdir / "exports.map"
    script.write_text(_VERSION_SCRIPT)
    cmd = [
        _compiler() or "c++",
        "-O2",
        "-shared",
        "-fPIC",
        "-std=c++17",
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{Path(hl.install_dir()) / 'include'}",
        f"-DHALIDE_PYTHON_EXTENSION_MODULE_NAME={module}",
        str(workdir / "glue.cpp"),
        str(workdir / "pipeline.o"),
        f"-Wl,--version-script={script}",
        "-o",
        str(out),
        "-lpthread",
        "-ldl",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"linking the Halide extension failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return out


def _load(path: Path, module: str) -> Callable[..., None]:
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load compiled pipeline {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, FN_NAME)


def _read_entry(entry: Path, module: str) -> Entry:
    start = time.perf_counter()
    meta = json.loads((entry / META).read_text())
    function = _load(entry / meta["module_file"], module)
    artifacts = {name: (entry / name).read_text() for name in meta["artifacts"]}
    return Entry(function, artifacts, meta, True, time.perf_counter() - start, entry)


Compiler = Callable[[], tuple[hl.Pipeline, list[hl.Argument], hl.Target, dict[str, str]]]


def get_or_build(root: Path, key: str, make: Compiler) -> Entry:
    """The cached pipeline under `key`, compiling it with `make` on a miss.

    `make()` defines and schedules the pipeline and returns (pipeline, arguments, target,
    artifacts); its time, code generation and linking are the entry's `compile_s`.
    """
    module = f"dsconv_{key}"
    entry = root / key
    if (entry / META).exists():
        try:
            return _read_entry(entry, module)
        except (OSError, ValueError, KeyError, ImportError):
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry: rebuild it
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        start = time.perf_counter()
        pipeline, arguments, target, artifacts = make()
        pipeline.compile_to(
            {
                hl.OutputFileType.object: str(work / "pipeline.o"),
                hl.OutputFileType.python_extension: str(work / "glue.cpp"),
                hl.OutputFileType.stmt: str(work / "lowered.stmt"),
            },
            arguments,
            FN_NAME,
            target,
        )
        library = _link(work, module)
        compile_s = time.perf_counter() - start
        for name, text in artifacts.items():
            (work / name).write_text(text)
        names = sorted({*artifacts, "lowered.stmt"})
        for scratch in ("pipeline.o", "glue.cpp", "exports.map"):
            (work / scratch).unlink()
        meta = {
            "key": key,
            "module_file": library.name,
            "artifacts": names,
            "compile_s": compile_s,
            "target": target.to_string(),
            "halide": halide_version(),
            "created": time.time(),
        }
        (work / META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(work, entry)
        except OSError:
            if not (entry / META).exists():  # neither ours nor another process's entry landed
                raise
            shutil.rmtree(work, ignore_errors=True)  # another process won the race: use its entry
            return _read_entry(entry, module)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    result = _read_entry(entry, module)
    result.hit = False
    result.meta["compile_s"] = compile_s
    return result
