"""How Halide 21 compiles a shared-memory tiled GEMM of the layer's pointwise (issue #6, question 2).

A fast fp32 GEMM keeps each thread's accumulators in registers while the block stages one chunk of the
reduction at a time (weights and depthwise values) in shared memory. In Halide that needs the
accumulator Func computed at the block level, with the reduction-chunk loop outside the thread loops.
These tests compile such a schedule for CUDA (PTX, no GPU needed) and check what Halide 21 makes of it:

- stored in registers, every thread gets a private copy of the whole block's accumulator tile, in local
  memory (here whenever the staging copies are laid over other threads than the tile; through the
  family's build path it happened with matching threads too: `allocate pointwise.0[float32 * 14336] in
  Register`, a 57344-byte local depot at 14x14x512, and on the H100 such kernels failed to launch,
  CUDA_ERROR_OUT_OF_MEMORY, or ran 5.6-68 ms: `tuning/README.md`);
- stored in shared memory, the accumulators are loaded and stored again for every reduction step.

So the family keeps the accumulators at thread level, with the whole reduction inside the thread, and
stages shared memory only for the whole reduction (`dw_at=block`, `weights=shared`).

The warp is the one level above the thread where Halide 21 does keep a tile in registers: a register
allocation computed at a warp, outside its `gpu_lanes` loop, is striped over the lanes (as in the
`gpu_lanes` schedules of Halide's `conv_layer` app). The family's `gemm=warp` layout uses that, and
shuffles each chunk's depthwise values between lanes; moved out to a block of several warps, the same
tile is again copied per thread.

A second limit is in the PTX backend's vector width: a dense vector of 8 fp32 lanes is not emitted as two
.v4 accesses but as .v2 pieces or scalars, multiplying the load instructions of the pointwise reduction
(the SM issues one load a clock against four FMAs). The family therefore vectorises in pieces of
`PTX_VECTOR` lanes (`family.gpu`), and these tests check both the limit and the remedy.

A third: nothing overlaps one reduction step's loads with the last step's FMAs inside a kernel. `async()`,
Halide's way to run a stage ahead of its consumer, leaves calls to the host runtime's semaphores in the
CUDA kernel, and the driver refuses the module; `prefetch()`, its way to fetch a later iteration's data
ahead into the caches, stops the compiler with an internal error when the loop is inside a CUDA kernel.

A fourth: a block may use at most 48 KiB of shared memory. Past that a launch needs the function's limit
raised first, which Halide 21's CUDA runtime never does (on the H100, 49,152 bytes run and 49,156 fail
with CUDA_ERROR_INVALID_VALUE from cuLaunchKernel), so the staged tiles of `family` stay within 48 KiB.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import halide as hl
import numpy as np
import pytest
from conftest import H100, requires_gpu

from kernels import registry
from kernels.device import DeviceSpec, visible_gpu
from kernels.halide import algorithm, builder, family, names, targets
from kernels.halide.family import gpu as family_gpu
from kernels.halide.tiling import HOST_ALIGNMENT
from kernels.layer import LayerShape, make_inputs

SHAPE = LayerShape("b14", n=1, h=14, w=14, c=512, co=512)
BLOCK = (64, 14, 2)  # co x px x py a block
THREAD = (4, 7, 1)  # co (one vector) x px x py a thread
CHUNK = 8  # reduction steps staged at a time


def _output_kernel(L: algorithm.Layer, tmp: Path) -> str:
    """PTX of the output kernel of the scheduled layer `L`."""
    path = tmp / "layer.stmt"
    L.output.compile_to_lowered_stmt(
        str(path), L.arguments, hl.StmtOutputFormat.Text, targets.cuda_target(H100)
    )
    text = path.read_text(errors="replace")
    start = text.index(".entry _kernel_output")
    return text[start : text.index("// -- End function", start)]


def _staged_gemm_ptx(accumulators: hl.MemoryType, tmp: Path, staging_threads: int | None = None) -> str:
    """PTX of the output kernel with the pointwise accumulators at block level in `accumulators`, the
    reduction split into CHUNK-channel steps outside the thread loops, and each step's weights and
    depthwise values staged in shared memory by the tile's threads (or by `staging_threads` threads)."""
    L = algorithm.define(SHAPE)
    c, x, y, n = L.c, L.x, L.y, L.n
    o, pw = L.output, L.pointwise
    ci, xi, yi, cii, xii, yii = (hl.Var(v) for v in ("ci", "xi", "yi", "cii", "xii", "yii"))
    o.tile([c, x, y], [ci, xi, yi], list(BLOCK)).tile([ci, xi, yi], [cii, xii, yii], list(THREAD))
    o.reorder(cii, xii, yii, ci, xi, yi, c, x, y, n).fuse(y, n, n).gpu_blocks(c, x, n)
    o.gpu_threads(ci, xi, yi).vectorize(cii).unroll(xii).unroll(yii)
    pw.compute_at(o, c).store_in(accumulators)
    pw.tile([c, x, y], [ci, xi, yi], list(THREAD)).reorder(ci, xi, yi, c, x, y).gpu_threads(c, x, y)
    pw.vectorize(ci).unroll(xi).unroll(yi)
    ro, ri = hl.RVar("ro"), hl.RVar("ri")
    u = pw.update().split(L.rc.x, ro, ri, CHUNK).tile([c, x, y], [ci, xi, yi], list(THREAD))
    u.reorder(ci, xi, yi, ri, c, x, y, ro).gpu_threads(c, x, y).vectorize(ci).unroll(xi).unroll(yi).unroll(ri)
    lanes, tx, ty = THREAD
    threads = [b // t for b, t in zip(BLOCK, THREAD, strict=True)]
    # The copies go over the tile's own threads, as the family lays a block-level stage, or over others.
    copiers = family.GpuParams("root", lanes, tx, ty, *threads)
    if staging_threads:
        copiers = family.GpuParams("root", lanes, tx, ty, staging_threads, 1, 1)
    L.depthwise.compute_root().gpu_tile(c, x, ci, xi, 32, 7, hl.TailStrategy.GuardWithIf)
    for staged, prefix in ((L.pointwise_filter.in_(), "w"), (L.depthwise.in_(), "d")):
        staged.compute_at(pw, ro).store_in(hl.MemoryType.GPUShared)
        family_gpu.threads_over(staged, list(staged.args()), copiers, prefix)
    return _output_kernel(L, tmp)


def test_block_level_register_accumulators_staged_by_other_threads_are_copied_per_thread(
    tmp_path: Path,
) -> None:
    ptx = _staged_gemm_ptx(hl.MemoryType.Register, tmp_path, staging_threads=128)
    depot = re.search(r"\.local \.align \d+ \.b8\s+__local_depot\d+\[(\d+)\]", ptx)
    tile_bytes = 4 * BLOCK[0] * BLOCK[1] * BLOCK[2]
    assert depot and int(depot.group(1)) == tile_bytes, depot  # the whole block's tile, in each thread
    assert "st.local" in ptx


def test_block_level_shared_accumulators_are_stored_again_every_reduction_step(tmp_path: Path) -> None:
    ptx = _staged_gemm_ptx(hl.MemoryType.GPUShared, tmp_path)
    assert "__local_depot" not in ptx
    vector_stores = len(re.findall(r"st\.shared\.v4", ptx))
    assert vector_stores == CHUNK * THREAD[1] * THREAD[2], vector_stores  # one per pixel, every step


def _vector_copy_ptx(width: int, tmp: Path, alignment: int | None = None) -> str:
    """PTX of a GPU copy (times two) of 1024 floats, `width` lanes a thread, as one dense vector; the
    input's host alignment declared as `alignment` bytes (None: Halide's default, the element's size)."""
    inp = hl.ImageParam(hl.Float(32), 1, "inp")
    inp.dim(0).set_bounds(0, 1024)
    if alignment is not None:
        inp.set_host_alignment(alignment)
    x, xo, xi, t = hl.Var("x"), hl.Var("xo"), hl.Var("xi"), hl.Var("t")
    f = hl.Func("f")
    f[x] = inp[x] * 2.0
    f.output_buffer().dim(0).set_bounds(0, 1024)
    f.split(x, xo, xi, width).split(xo, xo, t, 32).gpu_blocks(xo).gpu_threads(t).vectorize(xi)
    path = tmp / f"copy{width}_{alignment}.ptx"
    f.compile_to(
        {hl.OutputFileType.device_code: str(path)}, [hl.Argument(inp)], "f", targets.cuda_target(H100)
    )
    return path.read_text()


def test_an_eight_lane_vector_is_not_one_pair_of_v4_accesses_but_four_lanes_are(tmp_path: Path) -> None:
    four, eight = _vector_copy_ptx(4, tmp_path), _vector_copy_ptx(8, tmp_path)
    assert "ld.global.nc.v4.b32" in four and "st.global.v4.b32" in four
    assert ".v4." not in eight  # 8 lanes: .v2 pieces or scalars (Halide 21)


def test_a_two_lane_load_is_one_access_only_where_the_input_declares_its_alignment(tmp_path: Path) -> None:
    # Halide's own alignment of an input is its element's size: the 8-byte load is split into two scalars
    loads = re.findall(r"\tld\.global\.nc\.([a-z0-9.]+)", _vector_copy_ptx(2, tmp_path))
    assert loads == ["b32", "b32"], loads
    # declared (as algorithm.define does for every input: tiling.HOST_ALIGNMENT), one 8-byte access
    loads = re.findall(r"\tld\.global\.nc\.([a-z0-9.]+)", _vector_copy_ptx(2, tmp_path, HOST_ALIGNMENT))
    assert len(loads) == 1 and loads[0] in ("b64", "v2.b32", "v2.f32"), loads


def test_the_family_loads_and_stores_in_v4_pieces() -> None:
    shape = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    p = family.GpuParams("root", 8, 7, 1, 16, 2, 8, 8, "global", False, 255)
    assert family.check(p, shape, H100) is None
    ptx = builder.lower_for(names.FAMILY, shape, H100, family.build_options(p, {}))["kernels.ptx"]
    kernel = ptx[ptx.index(".entry _kernel_output") :]
    loop = kernel[kernel.index("Inner Loop Header") : kernel.index("bra", kernel.index("Inner Loop Header"))]
    loads = re.findall(r"\tld\.global\.nc\.([a-z0-9.]+)", loop)
    # Per reduction step of 8 channels: 2 weight vectors a channel, 2 depthwise vectors a pixel.
    assert loads and set(loads) == {"v4.b32"}, sorted(set(loads))
    assert len(loads) == 8 * 2 + 7 * 2
    stores = re.findall(r"\tst\.global\.([a-z0-9.]+)", kernel)
    assert set(stores) == {"v4.b32"} and len(stores) == 7 * 2


WARP_TILE = family.GpuParams("root", 8, 7, 1, 32, 1, 2, 4, "global", False, 128, "warp")  # 2 warps


def _warp_gemm_ptx(tmp: Path, accumulators_at_block: bool = False) -> str:
    """PTX of the output kernel of the family's `gemm` = warp schedule of WARP_TILE on SHAPE, with the
    accumulators at the warp (as the family computes them) or moved out to the block."""
    L = algorithm.define(SHAPE)
    family_gpu.apply_gpu(WARP_TILE, L, targets.cuda_target(H100))
    if accumulators_at_block:
        L.pointwise.compute_at(L.output, L.c)  # the block loop: outside both warps
    return _output_kernel(L, tmp)


def test_warp_striped_accumulators_stay_in_registers_at_the_warp_but_not_at_the_block(
    tmp_path: Path,
) -> None:
    p = WARP_TILE
    assert family.check(p, SHAPE, H100) is None
    at_warp = _warp_gemm_ptx(tmp_path)
    assert "__local_depot" not in at_warp
    # Each unrolled step broadcasts one depthwise value a pixel from lane to lane; .v4 stores.
    assert len(re.findall(r"shfl\.sync\.idx\.b32", at_warp)) == p.tx * p.ty * p.k
    stores = re.findall(r"\tst\.global\.([a-z0-9.]+)", at_warp)
    assert set(stores) == {"v4.b32"} and len(stores) == p.lanes // 4 * p.tx * p.ty
    # At the block, each thread holds a copy of every warp's accumulators, in local memory.
    at_block = _warp_gemm_ptx(tmp_path, accumulators_at_block=True)
    depot = re.search(r"__local_depot\d+\[(\d+)\]", at_block)
    warps = p.threads_x * p.threads_y
    assert depot and int(depot.group(1)) == 4 * warps * p.lanes * p.tx * p.ty  # a lane's tile per warp


# A software pipeline, the next reduction step's loads issued while this step's FMAs run, is what a
# cuBLAS `stage3` kernel has and Halide's `async()` asks for on the CPU (a producer running ahead of its
# consumer, synchronised by semaphores). Inside a CUDA kernel Halide 21 keeps those semaphores as calls to
# its host runtime (`halide_semaphore_init`, `halide_semaphore_release`), which device code cannot call:
# the driver refuses the module. So Halide 21 has no schedule that overlaps one step's loads with the last
# step's FMAs within a kernel; the family's kernels rely on other warps for that.
THREAD_TILE = {
    "dw_at": "root",
    "lanes": 4,
    "tx": 7,
    "ty": 1,
    "threads_co": 16,
    "threads_x": 1,
    "threads_y": 4,
}
ASYNC_SHAPE = LayerShape("b14a", n=2, h=14, w=14, c=512, co=512)


def _with_async(apply_gpu: Any, staged: str | None) -> Any:
    """`family.gpu.apply_gpu` followed, when `staged` names a Func, by `async()` on the wrapper that holds
    each reduction step's values of it (weights or depthwise), so it is computed ahead of the step."""

    def apply(p: family.GpuParams, L: algorithm.Layer, target: Any) -> dict[str, object]:
        decisions = apply_gpu(p, L, target)
        if staged:
            getattr(L, staged).in_().async_()
        return decisions

    return apply


def _async_params(device: DeviceSpec) -> family.Params:
    """The family's thread tile on ASYNC_SHAPE: the schedule whose stages `_with_async` makes async."""
    return family.from_options(THREAD_TILE, ASYNC_SHAPE, device)


@pytest.mark.parametrize("staged", ["pointwise_filter", "depthwise"])
def test_async_stages_inside_a_cuda_kernel_call_the_host_runtimes_semaphores(
    staged: str, tmp_path: Path
) -> None:
    kernels = {}
    for given in (staged, None):
        L = algorithm.define(ASYNC_SHAPE)
        _with_async(family_gpu.apply_gpu, given)(_async_params(H100), L, targets.cuda_target(H100))
        kernels[given] = set(re.findall(r"halide_semaphore_\w+", _output_kernel(L, tmp_path)))
    assert {"halide_semaphore_init", "halide_semaphore_release"} <= kernels[staged]
    assert not kernels[None]  # without `async` the same kernel calls nothing


@requires_gpu
@pytest.mark.gpu
def test_async_stages_inside_a_cuda_kernel_do_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    device = visible_gpu("gpu", 1.0, 1.0)
    monkeypatch.setattr(builder, "apply_gpu", _with_async(family_gpu.apply_gpu, "pointwise_filter"))
    # The driver refuses the module, whose PTX calls functions no device code defines (H100, 2026-11-24:
    # "CUDA: cuModuleLoadData failed: CUDA_ERROR_INVALID_PTX").
    with pytest.raises(hl.HalideError, match="CUDA_ERROR_INVALID_PTX"):
        built = registry.get("halide_family").build(
            ASYNC_SHAPE, device, family.build_options(_async_params(device), {})
        )
        built.run(built.place(make_inputs(ASYNC_SHAPE, 1)))
        built.sync()


PREFETCH = """
import sys
import halide as hl
from kernels.device import DeviceSpec
from kernels.halide import algorithm, family, targets
from kernels.halide.family.gpu import apply_gpu
from kernels.layer import LayerShape
shape, device = LayerShape(**{shape}), DeviceSpec(**{device})
L = algorithm.define(shape)
target = targets.cuda_target(device)
apply_gpu(family.from_options({tile}, shape, device), L, target)
if int(sys.argv[1]):
    L.pointwise.update().prefetch(L.depthwise, hl.RVar("ro"), hl.RVar("ro"), int(sys.argv[1]))
L.output.compile_to_lowered_stmt("/dev/null", L.arguments, hl.StmtOutputFormat.Text, target)
"""


def test_prefetching_a_later_reduction_step_inside_a_cuda_kernel_does_not_compile() -> None:
    # The other way to have the next steps' loads under way during this step's FMAs: prefetch the
    # depthwise values one or two reduction steps ahead (into the caches, as on the CPU). Halide 21's
    # prefetch pass assumes a host buffer and stops with an internal error, whose text the Python
    # binding reports only at HL_DEBUG_CODEGEN >= 1 (read once a process: hence a subprocess).
    script = PREFETCH.format(
        shape=dataclasses.asdict(ASYNC_SHAPE), device=dataclasses.asdict(H100), tile=THREAD_TILE
    )
    env = {**os.environ, "HL_DEBUG_CODEGEN": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    for ahead in (0, 1, 2):
        run = subprocess.run(
            [sys.executable, "-c", script, str(ahead)], env=env, capture_output=True, text=True, timeout=300
        )
        if not ahead:
            assert run.returncode == 0, run.stderr[-2000:]  # the same schedule without the prefetch
            continue
        assert run.returncode != 0
        assert re.search(
            r"Internal error at \S*Prefetch\.cpp:\d+ Condition failed: base && base->type\.is_handle\(\)",
            run.stderr,
        )


def _shared_tile(floats: int) -> hl.Func:
    """out(x) = src(x) + src(x + 1), where each block of 256 threads first writes its `floats` + 1
    values of src into shared memory: a block of (floats + 1) x 4 bytes of shared memory."""
    x, xo, xi, t, sx, st = (hl.Var(n) for n in ("x", "xo", "xi", "t", "sx", "st"))
    src, out = hl.Func("src"), hl.Func("out")
    src[x] = hl.f32(x)
    out[x] = src[x] + src[x + 1]
    out.split(x, xo, xi, floats).split(xi, xi, t, 256).reorder(t, xi, xo).gpu_blocks(xo).gpu_threads(t)
    src.compute_at(out, xo).store_in(hl.MemoryType.GPUShared)
    src.split(x, sx, st, 256, hl.TailStrategy.GuardWithIf).gpu_threads(st)
    return out


@requires_gpu
@pytest.mark.gpu
def test_a_block_may_use_at_most_48_kib_of_shared_memory() -> None:
    # A block may use more than 48 KiB of shared memory only after the function's limit is raised
    # (cuFuncSetAttribute, MAX_DYNAMIC_SHARED_SIZE_BYTES); Halide 21's CUDA runtime never raises it, so
    # a Halide kernel cannot use the rest of the H100's 227 KiB (`family.GPU_SHARED_BYTES`). A block's
    # depthwise of every channel at 7²x1024 would need 28 KiB a row of pixels, 196 KiB for the image.
    target = targets.cuda_target(visible_gpu())
    for floats in (11264, 16384):  # 44 KiB and 64 KiB (+ 4 bytes) a block
        run = _shared_tile(floats)
        if floats * 4 < 48 * 1024:
            out = run.realize([2 * floats], target)
            out.copy_to_host()
            assert np.array_equal(np.asarray(out), 2 * np.arange(2 * floats, dtype=np.float32) + 1)
            continue
        with pytest.raises(hl.HalideError, match="CUDA_ERROR_INVALID_VALUE"):
            run.realize([2 * floats], target).copy_to_host()
