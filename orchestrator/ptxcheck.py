"""`python -m orchestrator.ptxcheck`: the Halide schedules' CUDA kernels for GPU models the project cannot
run on, checked as far as a compiler can: registers, spills, shared memory and theoretical occupancy.

For each GPU model (default: the catalog's RTX cards, sm_75 and sm_86), each shape (default: the app
shape, MobileNetV1's blocks at batch 32 and the held-out experiment's shapes) and each schedule (the
four named ones and the family's heuristic for that model), Halide compiles the layer to PTX for the
model's capability without a GPU (`kernels.halide.builder.lower_for`), `ptxas -arch=sm_XX -v` assembles
it at the register cap the CUDA runtime would give it (Halide's 64, or the family schedule's own), and
the lowered statement gives each kernel's threads a block and its shared memory (Halide allocates it
dynamically, so ptxas does not see it). Occupancy is the occupancy calculator's count for the model's
SM (`kernels.halide.family.limits`). Writes `ptxcheck.csv` and `ptxcheck.md` under --out.

    python -m orchestrator.ptxcheck --out results/ptxcheck
    python -m orchestrator.ptxcheck --devices rtx2060 --shapes 1x33x33x120-40s2 --out /tmp/p
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kernels.device import DeviceSpec
from kernels.halide import family
from kernels.halide.family.limits import occupancy, sm_limits
from kernels.halide.names import FAMILY, MANUAL_SCHEDULES, kernel_func, plain_kernel
from kernels.layer import LayerShape
from orchestrator.config import CONF_DIR, ConfigError

DEFAULT_DEVICES = ("rtx2060", "rtx2080ti", "rtx3070")
SCHEDULES = (*MANUAL_SCHEDULES, "heuristic")
NAMED_CAP = 64  # Halide 21's CUDA runtime default register cap (HL_CUDA_JIT_MAX_REGISTERS)
GPU_BLOCK = re.compile(r"^(\s*)gpu_block<CUDA> \(([^,]+), 0, (\d+)\)")
GPU_THREAD = re.compile(r"gpu_thread<CUDA> \(\.thread_id_([xyz]), 0, ([^)]+)\)")
SHARED = re.compile(r"allocate \S+\[(\w+) \* (\d+)\] in GPUShared")
PTXAS_FUNCTION = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
PTXAS_USED = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
BYTES = {"float32": 4, "int32": 4, "uint32": 4, "float16": 2, "uint8": 1, "int8": 1, "float64": 8}


@dataclass(frozen=True)
class KernelRow:
    """One kernel of one schedule on one shape for one GPU model."""

    device: str
    cc: int
    shape: str
    schedule: str
    kernel: str
    grid_blocks: int
    threads: int
    registers: int
    cap: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    shared_bytes: int
    blocks_per_sm: int
    warps_per_sm: int
    occupancy_pct: float
    limiter: str


def ptxas_path() -> str:
    """ptxas: $PTXAS, else the one on PATH, else CUDA's default place; raises ConfigError when none."""
    for candidate in (os.environ.get("PTXAS"), shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ConfigError("no ptxas found: install the CUDA toolkit or set PTXAS=/path/to/ptxas")


def kernel_name(block_var: str) -> str:
    """The PTX entry of the kernel whose outermost block loop is `block_var` (`output$1.s0.y.y.n.block_id_z`
    is `_kernel_output__1_s0_y_y_n_block_id_z`)."""
    return "_kernel_" + block_var.replace("$", "__").replace(".", "_")


def kernels_of(stmt: str) -> dict[str, tuple[int, int, int]]:
    """Each kernel of a lowered statement: (blocks in its grid, threads a block, bytes of shared memory a
    block). A kernel is a top-level nest of gpu_block loops; its threads are the product of the largest
    extent of each thread dimension in it (what Halide launches it with)."""
    out: dict[str, tuple[int, int, int]] = {}
    current, indent = None, -1
    dims: dict[str, int] = {}
    blocks = shared = 0
    for line in stmt.splitlines():
        m = GPU_BLOCK.match(line)
        if m and (current is None or len(m.group(1)) <= indent):
            if current is not None:
                out[current] = (blocks, _product(dims), shared)
            current, indent, dims, shared = kernel_name(m.group(2).strip()), len(m.group(1)), {}, 0
            blocks = int(m.group(3))
            continue
        if current is None:
            continue
        if m:  # an inner block dimension
            blocks *= int(m.group(3))
            continue
        if line.strip() and not line.startswith(" " * (indent + 1)):
            out[current] = (blocks, _product(dims), shared)
            current, indent = None, -1
            continue
        for dim, extent in GPU_THREAD.findall(line):
            dims[dim] = max(dims.get(dim, 1), _extent(extent))
        for dtype, count in SHARED.findall(line):
            shared += BYTES.get(dtype, 4) * int(count)
    if current is not None:
        out[current] = (blocks, _product(dims), shared)
    return out


def _extent(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    numbers = [int(v) for v in re.findall(r"\d+", text)]
    return max(numbers) if numbers else 1  # a min()/max() of constants: its largest bound


def _product(dims: dict[str, int]) -> int:
    out = 1
    for v in dims.values():
        out *= v
    return out


def assemble(ptx: str, arch: str, cap: int, ptxas: str) -> dict[str, dict[str, int]]:
    """`ptxas -arch=<arch> -v --maxrregcount <cap>` of `ptx`: per entry, registers, spill store and load
    bytes, stack frame and static shared memory."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.ptx")
        src.write_text(ptx)
        proc = subprocess.run(
            [
                ptxas,
                f"-arch={arch}",
                "-v",
                "--maxrregcount",
                str(cap),
                str(src),
                "-o",
                str(Path(tmp, "k.cubin")),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    out: dict[str, dict[str, int]] = {}
    name = None
    for line in (proc.stderr + proc.stdout).splitlines():
        if m := PTXAS_FUNCTION.search(line):
            name = m.group(1)
            out[name] = {"registers": 0, "spill_store": 0, "spill_load": 0, "stack": 0, "smem": 0}
        elif name and (m := PTXAS_SPILL.search(line)):
            out[name].update(stack=int(m.group(1)), spill_store=int(m.group(2)), spill_load=int(m.group(3)))
        elif name and (m := PTXAS_USED.search(line)):
            out[name]["registers"] = int(m.group(1))
            if s := PTXAS_SMEM.search(line):
                out[name]["smem"] = int(s.group(1))
    return out


def check_schedule(shape: LayerShape, device: DeviceSpec, schedule: str, ptxas: str) -> list[KernelRow]:
    """The kernel rows of `schedule` (a named one, or `heuristic`: the family's for this model) on `shape`
    for `device`."""
    from kernels.halide import builder  # Halide: only this command needs it

    if schedule == "heuristic":
        params = family.heuristic(shape, device)
        assert isinstance(params, family.GpuParams), "ptxcheck compiles for GPU models only"
        name, options, cap = FAMILY, family.build_options(params, {}), params.max_registers
    else:
        name, options, cap = schedule, {}, NAMED_CAP
    artifacts = builder.lower_for(name, shape, device, options)
    cc = device.cuda_capability
    arch = f"sm_{cc}"
    assembled = assemble(artifacts["kernels.ptx"], arch, cap, ptxas)
    lowered = kernels_of(artifacts["lowered.stmt"])
    launched = {plain_kernel(k): v for k, v in lowered.items()}
    if len(launched) < len(lowered):
        raise RuntimeError(
            f"two kernels of the lowered statement share a name without counters: {list(lowered)}"
        )
    lim = sm_limits(cc)
    rows = []
    for kernel, facts in assembled.items():
        if plain_kernel(kernel) not in launched:
            raise RuntimeError(
                f"kernel {kernel} of the PTX is not in the lowered statement ({', '.join(launched)})"
            )
        grid, threads, dynamic = launched[plain_kernel(kernel)]
        shared = dynamic + facts["smem"]
        occ = occupancy(threads, facts["registers"], shared, lim)
        rows.append(
            KernelRow(
                device.name,
                cc,
                shape.name,
                schedule,
                kernel_func(kernel) or plain_kernel(kernel),
                grid,
                threads,
                facts["registers"],
                cap,
                facts["spill_store"],
                facts["spill_load"],
                facts["stack"],
                shared,
                occ.blocks,
                occ.warps,
                round(100 * occ.fraction, 1),
                occ.limiter,
            )
        )
    return rows


def write(rows: Sequence[KernelRow], out: Path, command: str) -> tuple[Path, Path]:
    """ptxcheck.csv (every row) and ptxcheck.md (a table per model, with the command and date)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "ptxcheck.csv", out / "ptxcheck.md"
    fields = list(KernelRow.__dataclass_fields__)
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    lines = [
        "# Halide's CUDA kernels for GPU models not run here, as ptxas sees them",
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d')}: PTX from Halide "
        f"(cuda_capability of each model), assembled by `ptxas -v` at the runtime's register cap; threads "
        "and shared memory a block from the lowered statement; occupancy is the occupancy calculator's for "
        "the model's SM (CUDA programming guide, technical specifications per compute capability). "
        "Spills are bytes a thread. No kernel here was run.",
    ]
    for device in dict.fromkeys(r.device for r in rows):
        mine = [r for r in rows if r.device == device]
        lines += ["", f"## {device} (sm_{mine[0].cc})", ""]
        lines.append(
            "| shape | schedule | kernel | grid blocks | threads | registers (cap) | spill st/ld B "
            "| shared B | blocks/SM | occupancy | limited by |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in mine:
            lines.append(
                f"| `{r.shape}` | {r.schedule} | {r.kernel} | {r.grid_blocks} | {r.threads} | {r.registers} "
                f"({r.cap}) | {r.spill_store_bytes}/{r.spill_load_bytes} | {r.shared_bytes} "
                f"| {r.blocks_per_sm} | {r.occupancy_pct:.1f}% | {r.limiter} |"
            )
        spills = [r for r in mine if r.spill_store_bytes or r.spill_load_bytes]
        lines += ["", f"{len(spills)} of {len(mine)} kernels spill; "
                  f"{sum(r.blocks_per_sm == 0 for r in mine)} do not fit an SM."]  # fmt: skip
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def default_shapes() -> list[LayerShape]:
    """The app shape, MobileNetV1's blocks at batch 32 (conf/experiment/mobilenet_v1.yaml) and the
    held-out experiment's shapes (conf/experiment/heldout.yaml)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from orchestrator.config import hydra_raises
    from orchestrator.plan import resolve_shape

    shapes: list[LayerShape] = []
    with hydra_raises(), initialize_config_dir(str(CONF_DIR), version_base=None):
        for experiment in ("mobilenet_v1", "heldout"):
            cfg = compose("config", overrides=[f"+experiment={experiment}"])
            catalog = OmegaConf.to_container(cfg.shape_catalog, resolve=True)
            for name in cfg.shapes:
                shape = resolve_shape(str(name), catalog, cfg.batch)  # type: ignore[arg-type]
                if shape not in shapes:
                    shapes.append(shape)
    return shapes


def devices_from_catalog(names: Iterable[str]) -> list[DeviceSpec]:
    """The catalog's GPU models by key (ConfigError naming the valid ones)."""
    from omegaconf import OmegaConf

    from orchestrator.plan import resolve_device

    catalog = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "catalog" / "devices.yaml"), resolve=True)
    out = [resolve_device(n, catalog) for n in names]  # type: ignore[arg-type]
    for d in out:
        if not d.is_gpu:
            gpus = [k for k, v in catalog.items() if isinstance(v, dict) and v.get("kind") == "cuda"]  # type: ignore[union-attr]
            raise ConfigError(f"device {d.name!r} is not a GPU; valid devices: {', '.join(gpus)}")
    return out


def run(argv: Sequence[str]) -> list[KernelRow]:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.ptxcheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--devices", default=",".join(DEFAULT_DEVICES), help="catalog GPU keys, comma-separated"
    )
    parser.add_argument("--shapes", default="", help="shape catalog names (their own batch) or inline "
                        "specs NxHxWxC-CO[sS], comma-separated (default: app, MobileNetV1 at batch 32, the "
                        "held-out shapes)")  # fmt: skip
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help=f"of {', '.join(SCHEDULES)}")
    parser.add_argument("--out", type=Path, required=True, help="folder for ptxcheck.csv and ptxcheck.md")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    from orchestrator.plan import resolve_shape

    schedules = [s for s in args.schedules.split(",") if s]
    unknown = [s for s in schedules if s not in SCHEDULES]
    if unknown:
        raise ConfigError(f"unknown schedule {unknown[0]!r}; valid schedules: {', '.join(SCHEDULES)}")
    devices = devices_from_catalog(d for d in args.devices.split(",") if d)
    named = [s for s in args.shapes.split(",") if s]
    catalog = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "catalog" / "shapes.yaml"), resolve=True)
    shapes = [resolve_shape(s, catalog, None) for s in named] or default_shapes()  # type: ignore[arg-type]
    ptxas = ptxas_path()
    rows: list[KernelRow] = []
    for device in devices:
        for shape in shapes:
            for schedule in schedules:
                rows.extend(check_schedule(shape, device, schedule, ptxas))
        print(f"{device.name}: {sum(r.device == device.name for r in rows)} kernels", flush=True)
    command = "python -m orchestrator.ptxcheck " + " ".join(argv)
    csv_path, md_path = write(rows, args.out, command.strip())
    print(f"wrote {csv_path} and {md_path}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
