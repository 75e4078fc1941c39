"""The roofline is a roof: no ok record passes 100% of it.

- the ceilings: Halide's register-resident FMA kernel (its PTX for CUDA, generated without a GPU, is all
  fused multiply-adds on registers; on this CPU it measures at least NumPy's SGEMM, which the old roof
  was), cache bandwidth above DRAM's, and on a GPU (marked `gpu`) the ceilings `python -m workers info
  --measure-gpu` prints;
- the roofs a record gets: the cache level where the working set fits and stays warm, DRAM otherwise,
  the TF32 peak for TF32 variants;
- records: `make run`'s experiment (fusion_ablation) on the host CPU, its Halide schedules and
  TensorFlow on its most compute-bound shapes, and every committed result, old records included
  (`orchestrator.report.roofs` says how their floor is recomputed), stay under 100%.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import has_cuda

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from workers import metrics

ROOT = Path(__file__).resolve().parents[1]
APP = LayerShape("app", 4, 112, 112, 32, 16)
H200 = DeviceSpec(
    "h200", "cuda", "NVIDIA H200", 66900, 4800, sm_count=132, cuda_capability=90, tf32_gflops=494700,
    fma_gflops=60000, sgemm_gflops=50000, cache_gbps=10000, cache_bytes=50 << 20, dram_gbps=4300,
)  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A measurement cache of this module's own, as on a fresh clone."""
    path = tmp_path_factory.mktemp("roofs-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSCONV_CACHE_DIR", str(path))
        yield path


# --- the kernels ---------------------------------------------------------------------------------------
def test_the_cuda_fma_kernel_is_fmas_on_registers_only() -> None:
    from kernels.halide import peak

    ptx = peak.fma_source(peak.cuda_target(86))
    assert ptx.count("fma.rn.f32") >= peak.CUDA_CHAINS * peak.CHAIN_STEPS, ptx[-3000:]
    assert "ld.local" not in ptx and "st.local" not in ptx, "values spilled out of registers"
    assert "ld.global" not in ptx, "the FMA kernel reads memory"
    assert "ntid" in ptx or "tid.x" in ptx  # gpu_threads


def test_the_cuda_read_kernel_loads_16_bytes_a_thread_in_every_pass() -> None:
    import re

    from kernels.halide import peak

    for nbytes, rotate in ((25 << 20, True), (1 << 30, False)):  # an L2-sized buffer, a DRAM-sized one
        ptx = peak.read_source(peak.cuda_target(86), nbytes, rotate=rotate)
        body = ptx[ptx.index(".entry") :]
        loads = re.findall(r"ld\.global[\w.]*", body)
        assert loads and all(".v4.b32" in ld or ".v2.b64" in ld for ld in loads), loads
        # every load sits in the loop over passes: none is hoisted out as a value of the first pass
        assert body.index("ld.global") > body.index("Loop Header"), body[:3000]
        assert "ld.local" not in ptx and "st.local" not in ptx


def test_the_cuda_read_kernel_moves_each_blocks_data_to_another_block_every_pass() -> None:
    """A fixed assignment would leave each SM re-reading its own share from its L1 (a 51 TB/s "L2" on the
    H200, 2026-12-04): every pass reads each chunk once, and a block's chunks change from pass to pass."""
    from kernels.halide import peak

    blocks, steps = 12, 3
    threads = blocks * peak.CUDA_THREADS
    total = threads * steps

    def block_chunks(block: int, p: int) -> set[int]:
        first = block * peak.CUDA_THREADS
        return {
            peak.read_chunk(t, s, p, threads, steps)
            for t in range(first, first + peak.CUDA_THREADS)
            for s in range(steps)
        }

    for p in (0, 1, 7, blocks * steps + 5):
        every = [peak.read_chunk(t, s, p, threads, steps) for t in range(threads) for s in range(steps)]
        assert sorted(every) == list(range(total))  # the whole buffer, once a pass
    for block in (0, 5, blocks - 1):
        seen = [block_chunks(block, p) for p in range(blocks)]
        for p in range(1, blocks):
            assert not seen[p] & seen[0], (block, p)  # nothing it read in pass 0 until `blocks` passes on
        assert block_chunks(block, blocks) & seen[0]
    fixed = {peak.read_chunk(t, s, p, threads, steps, rotate=False) for t in range(64) for s in range(steps)
             for p in range(3)}  # fmt: skip
    assert fixed == {t + threads * s for t in range(64) for s in range(steps)}  # DRAM: the same every pass


def test_the_gpu_roofs_read_dram_with_fixed_chunks_and_the_l2_with_moving_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks drift apart over the passes; with moving chunks a block a pass ahead of its neighbour reads
    what the neighbour reads at about the same moment, from the L2: a 5.14 TB/s "DRAM" on the H200
    (2026-12-04), above its 4.8 TB/s datasheet. So DRAM is read with each block's own chunks. The GPU's
    parts are stood in for here (no GPU); `measure_gpu`'s choice of buffer and assignment is what runs."""
    from types import SimpleNamespace

    from kernels.halide import peak
    from workers import roofs

    l2 = 50 << 20
    reads: list[tuple[int, bool]] = []

    def read(target: object, nbytes: int, sm_count: int = 0, rotate: bool = True, **_: object) -> peak.Rate:
        reads.append((nbytes, rotate))
        return peak.Rate(1000.0, 1.0, 1e12, 1, "read")

    torch = SimpleNamespace(cuda=SimpleNamespace(get_device_capability=lambda index: (9, 0)))
    monkeypatch.setattr(roofs, "_torch_gpu", lambda: (torch, "GPU", 132, l2))
    monkeypatch.setattr(roofs, "torch_sgemm_gflops", lambda torch: 1.0)
    monkeypatch.setattr(peak, "cuda_target", lambda capability: "cuda")
    monkeypatch.setattr(peak, "require_cuda", lambda target: None)
    monkeypatch.setattr(
        peak, "measure_fma_gflops", lambda target, sm_count=0: peak.Rate(1.0, 1.0, 1.0, 1, "fma")
    )
    monkeypatch.setattr(peak, "measure_read_gbps", read)
    roofs.measure_gpu(capability=90)
    assert reads == [(l2 // roofs.CACHE_FRACTION, True), (max(roofs.GPU_DRAM_BYTES, 16 * l2), False)]


def test_the_cpu_fma_kernel_is_vector_fmas() -> None:
    import halide as hl

    from kernels.halide import peak

    target = hl.get_host_target()
    asm = peak.fma_source(target, kind="assembly")
    if target.arch != hl.TargetArch.X86 or not target.has_feature(hl.TargetFeature.FMA):
        pytest.skip(f"the FMA count is checked on x86 with FMA; this host is {target.to_string()}")
    chains = peak.cpu_chains(target)
    fmas = sum(1 for line in asm.splitlines() if "vfmadd" in line and "ps" in line.split()[0])
    assert fmas >= chains * peak.CHAIN_STEPS, fmas


def test_cpu_ceilings_fma_peak_is_above_sgemm_and_cache_above_dram(cache: Path) -> None:
    from workers import roofs

    found = roofs.host_ceilings()
    assert found.fma_gflops >= found.sgemm_gflops > 0  # the old roof is under the new one
    assert found.fma_gflops >= found.fma_one_core_gflops > 0
    assert found.cache_bytes > 0 and found.cache_gbps > found.dram_gbps > 0
    assert roofs.cached_host_ceilings() == found  # cached: measured once per host
    done = subprocess.run(
        [sys.executable, "-m", "workers", "info"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DSCONV_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for line in ("cpu_fma_peak_gflops", "cpu_sgemm_gflops", "cpu_llc_gbps", "cpu_dram_gbps"):
        assert line in done.stdout


@pytest.mark.skipif(has_cuda(), reason="a CUDA GPU is present: the GPU test measures it")
def test_measure_gpu_without_a_gpu_is_one_line_and_exit_2(cache: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workers", "info", "--measure-gpu"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "DSCONV_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot measure the GPU" in done.stderr


@pytest.mark.gpu
def test_gpu_ceilings_are_measured_and_printed(cache: Path) -> None:
    if not has_cuda():
        pytest.skip("no CUDA GPU here")
    from workers import roofs

    found = roofs.gpu_ceilings(refresh=True)
    assert found.fma_gflops >= found.sgemm_gflops > 0
    assert found.cache_gbps > found.dram_gbps > 0
    done = subprocess.run(
        [sys.executable, "-m", "workers", "info", "--measure-gpu"], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env={**os.environ, "DSCONV_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for line in ("gpu_fma_peak_gflops", "gpu_sgemm_gflops", "gpu_l2_gbps", "gpu_dram_gbps"):
        assert line in done.stdout


# --- the roofs of a measurement --------------------------------------------------------------------------
def test_the_memory_roof_is_the_level_the_working_set_lives_in() -> None:
    warm = metrics.roof_for(H200, APP)  # 9.6 MB: fits in the L2
    assert (warm.gflops, warm.gbps, warm.memory) == (60000, 10000, "L2")
    assert metrics.roof_for(H200, APP, cold=True).memory == "DRAM"  # the L2 flushed before each call
    big = metrics.roof_for(H200, APP, resident_bytes=60 << 20)  # the rotated sets overflow it
    assert (big.gbps, big.memory) == (4300, "DRAM")
    tf32 = metrics.roof_for(H200, APP, tf32=True)
    assert tf32.gflops == 494700 and tf32.compute.startswith("TF32")
    datasheet = DeviceSpec("h200", "cuda", "NVIDIA H200", 66900, 4800)  # nothing measured
    roof = metrics.roof_for(datasheet, APP)
    assert (roof.gflops, roof.gbps, roof.memory) == (66900, 4800, "DRAM")
    m = metrics.derive(APP, H200, 1.0, warm)
    assert m["floor_ms"] == pytest.approx(max(APP.flops / 60000e9, APP.min_bytes / 10000e9) * 1e3)


# --- records -------------------------------------------------------------------------------------------
FUSION_SHAPES = ("mbv1_28_256_s1", "mbv1_14_512_s1")  # fusion_ablation's most compute-bound shapes
FUSION_VARIANTS = ("halide_tuned", "halide_fused_cblock", "halide_app", "tf_separable")


@pytest.mark.slow
def test_make_runs_records_stay_under_the_roof(cache: Path) -> None:
    """fusion_ablation (`make run`'s experiment) as planned, its fastest variants on its most
    compute-bound shapes (where the old SGEMM roof was passed by 2x), quick timing. Where the tuning
    database has no entry usable on this host, `halide_tuned` times its best-ranked candidates for 10 s a
    shape rather than the default 60 (the search is tests/test_tuned_select.py's; the roof is this one's)."""
    from hydra import compose, initialize_config_dir

    from orchestrator.config import CONF_DIR
    from orchestrator.plan import make_plan
    from workers.job import execute

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "+experiment=fusion_ablation", "timing=quick", "tuned.quick_budget_s=10",
                f"variants=[{','.join(FUSION_VARIANTS)}]", f"shapes=[{','.join(FUSION_SHAPES)}]",
            ],
        )  # fmt: skip
    records = [execute(job) for job in make_plan(cfg)]
    assert len(records) == len(FUSION_VARIANTS) * len(FUSION_SHAPES)
    for r in records:
        assert r.status == "ok", r.tags.get("error")
        assert 0 < r.metrics["pct_roofline"] < 100, (r.key, r.metrics, r.params)
        assert r.params["roof_compute"] == "fp32 FMA peak (measured)" and r.params["roof_memory"] in (
            "LLC",
            "DRAM",
        )
        assert float(r.params["roof_gflops"]) >= float(r.params["sgemm_gflops"])


def _committed() -> list:
    from workers.bundle import read_records

    return [r for path in sorted(ROOT.glob("results/**/records.jsonl")) for r in read_records(path)]


def test_no_committed_ok_record_passes_the_roof() -> None:
    """Every committed result, recomputed as the report does (`orchestrator.report.roofs`)."""
    from orchestrator.report.load import rows_from_records

    records = _committed()
    if not records:
        pytest.skip("no committed results in this checkout")
    rows = [r for r in rows_from_records(records) if r["status"] == "ok" and r.get("time_ms")]
    assert rows
    for row in rows:
        if row.get("device_kind") == "cpu" and not row.get("fma_gflops"):
            continue  # an old CPU record: no roof known (its peak was SGEMM), so no floor
        assert row.get("roofline_floor_ms"), (row["job_key"], row.get("roof_compute"))
        pct = 100 * row["roofline_floor_ms"] / row["time_ms"]
        assert pct < 100, (
            row["job_key"],
            pct,
            row["roof_compute"],
            row["peak_gflops"],
            row["memory_roof_gbps"],
        )
    tf32 = [r for r in rows if str(r["group"]).endswith("_tf32")]
    assert all(r["roof_compute"].startswith("TF32") for r in tf32 if r["device"] in ("h100", "h200"))


def test_old_and_new_records_get_the_roofs_they_should() -> None:
    """An old GPU record's SGEMM roof becomes the datasheet FMA peak; an old CPU record has none; a new
    record keeps the roofs its floor used, so the report's % of roofline is the worker's."""
    from orchestrator.report.load import row_from_parts

    shape = {"shape": "app", "n": "4", "h": "112", "w": "112", "c": "32", "co": "16", "stride": "1"}
    old_gpu = row_from_parts(
        {**shape, "variant": "halide_app", "framework": "halide", "device": "h100", "device_kind": "cuda",
         "peak_gflops": "66900", "mem_gbps": "3350", "roof_gflops": "50644", "roof_gbps": "3000"},
        {"time_ms": 1.0}, {"status": "ok"},
    )  # fmt: skip
    assert (old_gpu["peak_gflops"], old_gpu["memory_roof_gbps"], old_gpu["sgemm_gflops"]) == (
        66900,
        3000,
        50644,
    )
    old_tf32 = row_from_parts(
        {**shape, "variant": "cudnn_cl_tf32", "framework": "cudnn", "device": "h100", "device_kind": "cuda",
         "peak_gflops": "66900", "mem_gbps": "3350", "roof_gflops": "50644", "roof_gbps": "3000"},
        {"time_ms": 1.0}, {"status": "ok"},
    )  # fmt: skip
    assert old_tf32["peak_gflops"] == 494700
    old_cpu = row_from_parts(
        {**shape, "variant": "halide_app", "framework": "halide", "device": "cpu", "device_kind": "cpu",
         "peak_gflops": "87", "mem_gbps": "24", "roof_gflops": "87", "roof_gbps": "24"},
        {"time_ms": 1.0}, {"status": "ok"},
    )  # fmt: skip
    assert old_cpu.get("roofline_floor_ms") is None
    roof = metrics.roof_for(H200, APP)
    new = row_from_parts(
        {**shape, "variant": "halide_app", "framework": "halide", "device": "h200", "device_kind": "cuda",
         "peak_gflops": "66900", "mem_gbps": "4800", **roof.as_params()},
        {"time_ms": 0.5}, {"status": "ok"},
    )  # fmt: skip
    assert new["roofline_floor_ms"] == pytest.approx(metrics.derive(APP, H200, 0.5, roof)["floor_ms"])
