"""`python -m orchestrator.ptxcheck`: the schedules' PTX for a catalog RTX model, assembled by ptxas, with
registers, spills, shared memory and occupancy per kernel (one shape, one architecture: fast)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from kernels.halide import family
from kernels.halide.names import kernel_func, plain_kernel
from kernels.layer import LayerShape
from orchestrator import ptxcheck
from orchestrator.config import ConfigError

HAS_PTXAS = any(Path(p).exists() for p in (shutil.which("ptxas") or "", "/usr/local/cuda/bin/ptxas"))


@pytest.mark.skipif(not HAS_PTXAS, reason="no ptxas (CUDA toolkit) on this machine")
def test_ptxcheck_reports_each_kernel_of_one_shape_on_sm_75(tmp_path: Path) -> None:
    argv = ["--devices", "rtx2060", "--shapes", "1x33x33x120-40s2", "--schedules", "unfused,heuristic"]
    rows = ptxcheck.run([*argv, "--out", str(tmp_path)])
    unfused = [r for r in rows if r.schedule == "unfused"]
    assert sorted(r.kernel for r in unfused) == ["depthwise", "output"]  # two kernels
    for r in rows:
        assert r.cc == 75 and r.threads > 0 and r.grid_blocks > 0
        assert 0 < r.registers <= r.cap and r.blocks_per_sm >= 1 and 0 < r.occupancy_pct <= 100
    assert all(r.cap == ptxcheck.NAMED_CAP for r in unfused)
    with (tmp_path / "ptxcheck.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    text = (tmp_path / "ptxcheck.md").read_text()
    assert "## rtx2060 (sm_75)" in text and "| `1x33x33x120-40s2` | unfused | depthwise |" in text


def test_ptxcheck_reads_kernels_from_the_lowered_statement_and_names_bad_input(tmp_path: Path) -> None:
    stmt = """
  gpu_block<CUDA> (output$3.s0.y.y.n.block_id_z, 0, 6) {
   gpu_block<CUDA> (output$3.s0.c.c.block_id_x, 0, 2) {
    allocate depthwise$3.0[float32 * 1152] in GPUShared
    gpu_thread<CUDA> (.thread_id_y, 0, 2) {
     gpu_thread<CUDA> (.thread_id_x, 0, 16) {
      gpu_thread<CUDA> (.thread_id_x, 0, 32) {
      }
     }
    }
   }
  }
  free x
"""
    assert ptxcheck.kernels_of(stmt) == {"_kernel_output__3_s0_y_y_n_block_id_z": (12, 64, 4608)}
    with pytest.raises(ConfigError, match=r"valid devices: .*rtx2060"):
        ptxcheck.run(["--devices", "rtx9999", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="is not a GPU"):
        ptxcheck.run(["--devices", "cpu", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match=r"valid schedules: app, unfused"):
        ptxcheck.run(["--schedules", "fast", "--out", str(tmp_path)])
    with pytest.raises(
        ConfigError, match=r"unknown shape '1x2x3'; valid shapes: app, mbv1_112_32_s1, .*inline spec"
    ):
        ptxcheck.run(["--shapes", "1x2x3", "--out", str(tmp_path)])


def test_a_kernel_of_the_ptx_is_matched_to_its_statement_whatever_counters_halide_and_llvm_added() -> None:
    # names seen when one process had built many pipelines (CI's pytest workers): Halide numbers a Func or
    # Var made again (`$99`, `block_id_x$2`), PTX writes `$` as `__` or `_`, LLVM appends `__1` to a name
    # it has seen before
    pairs = [
        ("output$108.s0.c.cb.t.t.t.to.block_id_x$2", "_kernel_output__108_s0_c_cb_t_t_t_to_block_id_x__2__1"),
        (
            "pointwise$39_intm_global_wrapper$0.s0.y.y.n.n.block_id_z",
            "_kernel_pointwise_39_intm_global_wrapper_0_s0_y_y_n_n_block_id_z__1",
        ),
        ("depthwise.s0.y.y.block_id_z", "_kernel_depthwise_s0_y_y_block_id_z"),
    ]
    for block_var, ptx_entry in pairs:
        assert plain_kernel(ptxcheck.kernel_name(block_var)) == plain_kernel(ptx_entry)
    assert plain_kernel(pairs[0][1]) != plain_kernel(pairs[1][1])
    assert [kernel_func(e) for _, e in pairs] == ["output", "pointwise_intm", "depthwise"]


@pytest.mark.skipif(not HAS_PTXAS, reason="no ptxas (CUDA toolkit) on this machine")
def test_the_h200_heuristic_splits_the_long_narrow_reduction_into_kernels_that_do_not_spill(
    tmp_path: Path,
) -> None:
    """960 -> 160 channels on 7 x 7 pixels at batch 32: the heuristic's split reduction (split-K) is the
    depthwise, a kernel of partial sums with split_k times the 64 blocks of the unsplit grid, and the
    output kernel that adds them; ptxas assembles each for sm_90 without spilling."""
    argv = ["--devices", "h200", "--shapes", "32x7x7x960-160", "--schedules", "heuristic"]
    rows = ptxcheck.run([*argv, "--out", str(tmp_path)])
    kernels = {r.kernel: r for r in rows}
    assert sorted(kernels) == ["depthwise", "output", "pointwise_intm"]
    [h200] = ptxcheck.devices_from_catalog(["h200"])
    split_k = family.heuristic(LayerShape("proj", n=32, h=7, w=7, c=960, co=160), h200).split_k
    assert split_k > 1 and kernels["pointwise_intm"].grid_blocks == 64 * split_k
    for r in rows:
        assert r.cc == 90 and r.spill_store_bytes == 0 and r.spill_load_bytes == 0
