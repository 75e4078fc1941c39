"""The profiler pass: Nsight Compute output parsed into metrics, the ncu command, and graceful absence.

The parser is tested on real Nsight Compute 2025.3.1 output captured on an H100 (tests/fixtures/ncu/,
see its README): the unfused Halide layer (two kernels a run) and cuDNN through PyTorch (four), each
exported both in base units and in ncu's auto-scaled units. Without ncu (as here), `profile_job`
must say why in its status and never raise. On a GPU, one job of each framework is profiled end to end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, requires_gpu

from kernels import registry
from kernels.device import DeviceSpec, visible_gpu
from kernels.layer import LayerShape
from workers.profiling import (
    DEFAULT_SECTIONS,
    OK,
    ProfileConfigError,
    ProfileResult,
    ProfileSettings,
    devcode,
    ncu,
    nsys,
    parse,
    profile_job,
)
from workers.profiling.capture_fixtures import HALIDE_FILTER, SHAPE
from workers.profiling.settings import EXIT_SKIPPED, MLFLOW_KEY, NVTX_RANGE, check_tool
from workers.schema import Job, Record, TimingSpec

FIXTURES = ROOT / "tests" / "fixtures" / "ncu"
CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100, mem_gbps=10)
H100 = DeviceSpec(
    "h100", "cuda", "NVIDIA H100", peak_gflops=66900, mem_gbps=3350, sm_count=132, cuda_capability=90
)
TINY = LayerShape("tiny", n=1, h=6, w=5, c=3, co=4)
STALL_REASONS = {
    "barrier", "branch_resolving", "dispatch_stall", "drain", "gmma", "imc_miss", "lg_throttle",
    "long_scoreboard", "math_pipe_throttle", "membar", "mio_throttle", "misc", "no_instruction",
    "not_selected", "short_scoreboard", "sleeping", "tex_throttle", "wait",
}  # fmt: skip


def fixture(name: str) -> list[parse.KernelProfile]:
    return parse.read_raw_csv((FIXTURES / name).read_text())


# --- the parser, on real output ------------------------------------------------------------------
def test_reads_every_kernel_in_launch_order() -> None:
    kernels = fixture("halide_unfused.csv")
    assert [k.index for k in kernels] == [0, 1, 2, 3]
    assert [k.name.split("_s0")[0] for k in kernels] == ["_kernel_depthwise", "_kernel_output"] * 2
    assert all(re.search(HALIDE_FILTER, k.name) for k in kernels)
    assert kernels[0].units["gpu__time_duration.sum"] == "second"
    assert kernels[0].text["Block Size"] == "(32, 8, 1)"


def test_cudnn_run_is_four_kernels() -> None:
    kernels = fixture("cudnn.csv")
    names = [k.name for k in kernels]
    assert len(names) == 8 and names[:4] == names[4:]  # two profiled runs, the same kernels each
    assert any("conv" in n for n in names[:4])


@pytest.mark.parametrize("case", ["halide_unfused", "cudnn"])
def test_base_and_auto_scaled_units_agree(case: str) -> None:
    """The same report exported with `--print-units base` and in ncu's default units parses the same."""
    base = parse.summarize(fixture(f"{case}.csv"), runs=2).metrics
    auto = parse.summarize(fixture(f"{case}_auto_units.csv"), runs=2).metrics
    assert base.keys() == auto.keys()
    for key, value in base.items():
        assert auto[key] == pytest.approx(value, rel=2e-3, abs=0.02), key


def test_halide_summary_is_per_kernel_and_per_run() -> None:
    parsed = parse.summarize(fixture("halide_unfused.csv"), runs=2)
    m, t = parsed.metrics, parsed.tags
    assert (parsed.kernels_per_run, parsed.runs) == (2, 2)
    assert m["ncu.kernels"] == 2 and m["ncu.runs"] == 2
    assert t["ncu.k0.name"].startswith("_kernel_depthwise") and t["ncu.k1.name"].startswith("_kernel_output")
    # the per-kernel duration is the mean of its two launches (17,728 and 17,888 ns)
    assert m["ncu.k0.duration_us"] == pytest.approx((17.728 + 17.888) / 2)
    assert m["ncu.sum.duration_us"] == pytest.approx(m["ncu.k0.duration_us"] + m["ncu.k1.duration_us"])
    assert m["ncu.sum.dram_bytes"] == pytest.approx(m["ncu.k0.dram_bytes"] + m["ncu.k1.dram_bytes"])
    for i in (0, 1):
        for key in ("dram_pct", "sm_pct", "occupancy_achieved_pct", "occupancy_theoretical_pct"):
            assert 0 < m[f"ncu.k{i}.{key}"] <= 100, key
        assert m[f"ncu.k{i}.occupancy_achieved_pct"] <= m[f"ncu.k{i}.occupancy_theoretical_pct"]
        assert m[f"ncu.k{i}.registers"] == int(m[f"ncu.k{i}.registers"]) > 0
    assert (m["ncu.k0.registers"], m["ncu.k1.registers"]) == (40, 22)
    assert m["ncu.sum.registers"] == 40  # the largest kernel's
    assert m["ncu.k0.block_size"] == 256 and m["ncu.k0.grid_size"] == 6272


def test_depthwise_kernel_reads_its_input_once_from_dram() -> None:
    """DRAM bytes come from Hopper's rate x duration: the depthwise kernel moves about its input."""
    m = parse.summarize(fixture("halide_unfused.csv"), runs=2).metrics
    input_bytes = SHAPE.n * SHAPE.h * SHAPE.w * SHAPE.c * 4
    assert 0.9 * input_bytes < m["ncu.k0.dram_bytes"] < 1.5 * input_bytes


@pytest.mark.parametrize("case", ["halide_unfused", "cudnn"])
def test_top_three_stalls_are_ranked_shares(case: str) -> None:
    parsed = parse.summarize(fixture(f"{case}.csv"), runs=2)
    m, t = parsed.metrics, parsed.tags
    for prefix in ["ncu"] + [f"ncu.k{i}" for i in range(parsed.kernels_per_run)]:
        shares = [m[f"{prefix}.stall{j}.share"] for j in (1, 2, 3)]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
        reasons = [t[f"{prefix}.stall{j}.reason"] for j in (1, 2, 3)]
        assert set(reasons) <= STALL_REASONS and len(set(reasons)) == 3
    assert t["ncu.stall1.reason"] == "long_scoreboard"  # both layers wait on global memory most


def test_wholerun_percentages_are_duration_weighted() -> None:
    m = parse.summarize(fixture("cudnn.csv"), runs=2).metrics
    durations = [m[f"ncu.k{i}.duration_us"] for i in range(4)]
    expected = sum(m[f"ncu.k{i}.sm_pct"] * d for i, d in enumerate(durations)) / sum(durations)
    assert m["ncu.sum.sm_pct"] == pytest.approx(expected)
    assert min(m[f"ncu.k{i}.sm_pct"] for i in range(4)) <= m["ncu.sum.sm_pct"] <= 100


def test_every_key_is_mlflow_safe() -> None:
    for case in ("halide_unfused", "cudnn"):
        parsed = parse.summarize(fixture(f"{case}.csv"), runs=2)
        assert all(MLFLOW_KEY.match(k) for k in [*parsed.metrics, *parsed.tags])
        assert all(math.isfinite(v) for v in parsed.metrics.values())


def test_tail_mode_keeps_the_last_runs() -> None:
    """Warm-ups profiled too (no NVTX, no count): 2 warm-up + 2 profiled runs of 2 kernels."""
    kernels = fixture("halide_unfused_tail.csv")
    assert len(kernels) == 8
    kept = parse.keep_last_runs(kernels, runs=2, total_runs=4)
    assert kept is not None and [k.index for k in kept] == [4, 5, 6, 7]
    assert parse.keep_last_runs(kernels, runs=2, total_runs=3) is None  # 8 launches are not 3 runs


def test_runs_that_do_not_split_are_taken_as_one() -> None:
    parsed = parse.summarize(fixture("cudnn.csv"), runs=3)  # 8 launches are not 3 equal runs
    assert (parsed.kernels_per_run, parsed.runs) == (8, 1)


@pytest.mark.parametrize(
    ("unit", "factor", "base"),
    [
        ("ns", 1e-9, "second"),
        ("usecond", 1e-6, "second"),
        ("Mbyte", 1e6, "byte"),
        ("Kbyte/block", 1e3, "byte/block"),
        ("Gbyte/s", 1e9, "byte/second"),
        ("Ghz", 1e9, "hz"),
        ("%/Kbyte", 1e-3, "%/byte"),
        ("register/thread", 1.0, "register/thread"),
        ("", 1.0, ""),
    ],
)
def test_unit_scale(unit: str, factor: float, base: str) -> None:
    got_factor, got_base = parse.unit_scale(unit)
    assert got_factor == pytest.approx(factor) and got_base == base


def test_not_an_ncu_csv() -> None:
    with pytest.raises(parse.CsvFormatError, match="raw"):
        parse.read_raw_csv("a,b,c\n1,2,3\n")
    assert parse.read_raw_csv("==PROF== No kernels were profiled.\n") == []
    assert parse.summarize([]).metrics == {}


def test_ptx_entries_are_the_kernels_of_a_run() -> None:
    entries = devcode.ptx_entries((FIXTURES / "halide_unfused.ptx").read_text())
    assert len(entries) == 2 and entries[0].startswith("_kernel_depthwise")


# --- commands ------------------------------------------------------------------------------------
def _flag_values(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]


def test_nvtx_plan_command() -> None:
    settings = ProfileSettings(warmup=3, runs=2)
    plan = ncu.plan_launches(settings, "torch", None)
    assert (plan.mode, plan.launch_skip) == ("nvtx", 0)
    target = ["python", "-m", "workers.profiling.target", "job.json", *ncu.target_args(plan)]
    cmd = ncu.ncu_command("ncu", target, HALIDE_FILTER, settings, plan, Path("out/report"))
    assert cmd[:3] == ["ncu", "--target-processes", "all"]
    assert _flag_values(cmd, "--kernel-name") == [f"regex:{HALIDE_FILTER}"]
    assert _flag_values(cmd, "--nvtx-include") == [NVTX_RANGE] and "--nvtx" in cmd
    assert "--launch-skip" not in cmd and _flag_values(cmd, "--launch-count") == [str(2 * 64)]
    assert tuple(_flag_values(cmd, "--section")) == DEFAULT_SECTIONS
    assert _flag_values(cmd, "--clock-control") == ["none"]
    assert _flag_values(cmd, "-o") == ["out/report"] and "-f" in cmd
    assert cmd[-8:] == [*target[:4], "--warmup", "3", "--runs", "2"]  # the target comes last, marked


def test_count_plan_skips_every_warmup_kernel() -> None:
    """Two kernels a run (unfused): W warm-up runs are 2W filtered launches to skip."""
    settings = ProfileSettings(warmup=3, runs=2, nvtx=True)
    plan = ncu.plan_launches(settings, None, kernels_per_run=2)
    cmd = ncu.ncu_command("ncu", ["t", *ncu.target_args(plan)], None, settings, plan, Path("r"))
    assert plan.mode == "count"
    assert _flag_values(cmd, "--launch-skip") == ["6"] and _flag_values(cmd, "--launch-count") == ["4"]
    assert "--nvtx" not in cmd and "--kernel-name" not in cmd  # no filter: every kernel is the variant's
    assert cmd[-1] == "--no-nvtx"
    explicit = ncu.plan_launches(dataclasses.replace(settings, kernels_per_run=5), None, 2)
    assert (explicit.launch_skip, explicit.launch_count) == (15, 10)  # the config wins over the PTX


def test_tail_plan_and_nvtx_switched_off() -> None:
    settings = ProfileSettings(warmup=2, runs=1, nvtx=False, max_kernels_per_run=8)
    plan = ncu.plan_launches(settings, "torch", None)  # NVTX available but switched off
    assert (plan.mode, plan.launch_skip, plan.launch_count) == ("tail", 0, 24)


def test_clock_control_is_passed_through() -> None:
    settings = ProfileSettings(clock_control="base")
    plan = ncu.plan_launches(settings, "torch", None)
    cmd = ncu.ncu_command("ncu", [], None, settings, plan, Path("r"))
    assert _flag_values(cmd, "--clock-control") == ["base"]
    assert _flag_values(cmd, "--cache-control") == ["all"]  # ncu's own default, said explicitly
    warm = ncu.ncu_command("ncu", [], None, ProfileSettings(cache_control="none"), plan, Path("r"))
    assert _flag_values(warm, "--cache-control") == ["none"]


def test_export_command() -> None:
    cmd = ncu.export_command("ncu", Path("r.ncu-rep"))
    assert cmd[:3] == ["ncu", "--import", "r.ncu-rep"] and "--csv" in cmd
    assert _flag_values(cmd, "--page") == ["raw"] and _flag_values(cmd, "--print-units") == ["base"]


def test_nsys_command() -> None:
    cmd = nsys.nsys_command("nsys", ["python", "t.py"], Path("out/timeline"))
    assert cmd[:2] == ["nsys", "profile"] and _flag_values(cmd, "--trace") == ["cuda,nvtx"]
    assert _flag_values(cmd, "-o") == ["out/timeline"] and cmd[-2:] == ["python", "t.py"]


def test_nsys_without_a_report_says_why() -> None:
    """On the lent H100, nsys writes a .qdstrm but cannot import it: the status quotes its error lines."""
    why = nsys.failure_lines((FIXTURES / "nsys_h100_no_report.log").read_text())
    assert why.startswith("Importer error status") and "Unable to retrieve the importer version" in why


# --- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ncu", "nsys", "none"])
def test_config_files_load(name: str) -> None:
    cfg = yaml.safe_load((ROOT / "conf" / "profile" / f"{name}.yaml").read_text())
    assert check_tool(cfg["tool"]) == name
    settings = ProfileSettings.from_config(cfg)
    assert settings.clock_control == "none" and settings.cache_control == "all" and settings.warmup >= 1


def test_bad_settings_name_the_valid_choices() -> None:
    with pytest.raises(ProfileConfigError, match=r"\['none', 'base'\]"):
        ProfileSettings(clock_control="max")
    with pytest.raises(ProfileConfigError, match=r"\['all', 'none'\]"):
        ProfileSettings(cache_control="warm")
    with pytest.raises(ProfileConfigError, match="valid keys: tool, warmup"):
        ProfileSettings.from_config({"tool": "ncu", "warmpu": 3})
    with pytest.raises(ProfileConfigError, match=r"\['none', 'ncu', 'nsys'\]"):
        check_tool("nvprof")
    with pytest.raises(ProfileConfigError, match="runs"):
        ProfileSettings(runs=0)


# --- without the profilers -----------------------------------------------------------------------
def _job(device: DeviceSpec, variant: str = "numpy_ref") -> Job:
    return Job("profiling-test", variant, TINY, device, TimingSpec(warmup=1, min_repeats=2, max_time_s=0.5))


def test_without_ncu_the_status_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setattr(ncu, "NCU_GLOBS", ())  # and none of the usual install folders
    result = profile_job(_job(H100), "ncu", ProfileSettings(), tmp_path / "p")
    assert result.status.startswith("ncu not found on PATH") and "profile.ncu_path" in result.status
    assert result.metrics == {} and not result.ok
    missing = profile_job(_job(H100), "ncu", ProfileSettings(ncu_path=str(tmp_path / "ncu")), tmp_path / "q")
    assert missing.status.startswith(f"ncu not found at {tmp_path / 'ncu'}")


def test_without_nsys_the_status_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nsys, "NSYS_GLOBS", ())
    assert profile_job(_job(H100), "nsys", ProfileSettings(), tmp_path).status.startswith("nsys not found")


def test_no_gpu_and_no_profile(tmp_path: Path) -> None:
    assert profile_job(_job(CPU), "ncu", ProfileSettings(), tmp_path).status.startswith("no GPU: device cpu")
    assert profile_job(_job(H100), "none", ProfileSettings(), tmp_path).status == "off (profile=none)"
    with pytest.raises(ProfileConfigError):
        profile_job(_job(H100), "vtune", ProfileSettings(), tmp_path)


def test_job_keeps_its_timing_with_a_profile_status(tmp_path: Path) -> None:
    """What the worker does: time the job, then profile it; no ncu here, so the status says why."""
    from workers.job import execute

    job = _job(CPU)
    record = execute(job)
    assert record.status == "ok" and record.metrics["time_ms"] > 0
    result = profile_job(job, "ncu", ProfileSettings(), tmp_path)
    result.apply_to(record)
    assert record.status == "ok" and record.metrics["time_ms"] > 0
    assert record.tags["profile_status"] == result.status != OK


def test_apply_to_merges_text_artifacts_only(tmp_path: Path) -> None:
    (tmp_path / "report.csv").write_text("x")
    (tmp_path / "report.ncu-rep").write_bytes(b"\x00binary")
    result = ProfileResult(
        OK,
        metrics={"ncu.sum.duration_us": 1.5},
        tags={"ncu.stall1.reason": "wait"},
        artifacts={"report.csv": tmp_path / "report.csv", "report.ncu-rep": tmp_path / "report.ncu-rep"},
    )
    record = Record("k")
    result.apply_to(record)
    assert record.tags == {"ncu.stall1.reason": "wait", "profile_status": OK}
    assert record.metrics == {"ncu.sum.duration_us": 1.5} and record.artifacts == {"profile/report.csv": "x"}


def _target(job: Job, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job.to_dict()))
    cmd = [sys.executable, "-m", "workers.profiling.target", str(path), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_target_process_describes_and_launches(tmp_path: Path) -> None:
    described = tmp_path / "describe.json"
    done = _target(_job(CPU), tmp_path, "--describe", str(described), "--warmup", "1", "--runs", "2")
    assert done.returncode == 0, done.stderr
    info = json.loads(described.read_text())
    assert info["framework"] == "numpy" and info["kernel_filter"] is None and info["device_code"] is None


def test_target_process_says_when_the_variant_cannot_run(tmp_path: Path) -> None:
    described = tmp_path / "describe.json"
    done = _target(_job(H100), tmp_path, "--describe", str(described), "--no-run")  # numpy_ref: CPU only
    assert done.returncode == EXIT_SKIPPED and "no cuda implementation" in done.stderr
    assert "no cuda implementation" in json.loads(described.read_text())["skipped"]


def test_halide_device_code_from_a_pipeline() -> None:
    """PTX comes from compile_to(device_code), which needs no GPU; the fused capture layer is one kernel."""
    from workers.profiling.capture_fixtures import HalideLayer

    code, note = devcode.device_code(HalideLayer(SHAPE, fused=True))
    assert note == "compile_to(device_code)" and code
    # Halide suffixes a Func's name (output$73 -> _kernel_output_73_...) when this process has already
    # defined one of that name, so the check ignores that suffix.
    names = [re.sub(r"_\d+$", "", e.split("_s0")[0]) for e in devcode.ptx_entries(code)]
    assert names == ["_kernel_output"]


# --- on a GPU ------------------------------------------------------------------------------------
def _profile_or_skip(job: Job, tmp_path: Path) -> ProfileResult:
    if ncu.find_ncu() is None:
        pytest.skip("ncu is not installed on this GPU node")
    result = profile_job(job, "ncu", ProfileSettings(warmup=2, runs=1, timeout_s=300), tmp_path)
    if result.status.startswith("variant skipped"):
        pytest.skip(result.status)
    return result


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("framework", ["halide", "cudnn", "tensorflow"])
def test_one_job_per_framework_profiled_end_to_end(framework: str, tmp_path: Path) -> None:
    names = [
        v.name for v in registry.all_variants().values() if v.framework == framework and "cuda" in v.kinds
    ]
    if not names:
        pytest.skip(f"no {framework} variant for CUDA is registered")
    job = _job(visible_gpu("gpu", 1.0, 1.0), names[0])
    job = dataclasses.replace(job, shape=LayerShape("app", n=1, h=56, w=56, c=32, co=32))
    result = _profile_or_skip(job, tmp_path)
    assert result.status == OK, result.status
    assert result.metrics["ncu.sum.duration_us"] > 0 and result.metrics["ncu.kernels"] >= 1
    assert result.tags["ncu.skip_mode"] in ncu.MODES and "ncu.stall1.reason" in result.tags
    assert result.artifacts["report.ncu-rep"].stat().st_size > 0 and "report.csv" in result.artifacts
    if framework == "halide":
        assert "kernels.ptx" in result.artifacts, result.tags.get("profile_device_code")
    _logs_to_mlflow(result, tmp_path / "mlruns")


def _logs_to_mlflow(result: ProfileResult, store: Path) -> None:
    """Metrics, tags and the report go into an MLflow run and come back (where MLflow is installed)."""
    mlflow = pytest.importorskip("mlflow")
    if not hasattr(mlflow, "start_run"):  # only the repository's mlflow/ folder (server files) imports
        pytest.skip("profiled ok; MLflow is not installed on this node, so the logging step did not run")
    previous = mlflow.get_tracking_uri()
    store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment(
            "profiling-test", artifact_location=(store / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_metrics(result.metrics)
            mlflow.set_tags({**result.tags, "profile_status": result.status})
            mlflow.log_artifact(str(result.artifacts["report.ncu-rep"]), "profile")
        got = mlflow.get_run(run.info.run_id)
        listed = [f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "profile")]
    finally:
        mlflow.set_tracking_uri(previous)
    assert got.data.metrics == pytest.approx(result.metrics)
    assert got.data.tags["profile_status"] == OK
    assert all(got.data.tags[k] == v for k, v in result.tags.items())
    assert listed == [f"profile/{result.artifacts['report.ncu-rep'].name}"]


def test_parsed_profile_logs_to_mlflow(tmp_path: Path) -> None:
    """Every key the parser makes from real output is accepted by MLflow, with the report as an artifact."""
    parsed = parse.summarize(fixture("halide_unfused.csv"), runs=2)
    result = ProfileResult(
        OK, parsed.metrics, parsed.tags, {"report.ncu-rep": FIXTURES / "halide_unfused.ncu-rep"}
    )
    _logs_to_mlflow(result, tmp_path / "mlruns")


@pytest.mark.gpu
@requires_gpu
def test_capture_cases_profile_end_to_end(tmp_path: Path) -> None:
    """The fixture cases through the same runner: NVTX range, two kernels a run for the unfused layer."""
    from workers.profiling import procs
    from workers.profiling.capture_fixtures import MODULE
    from workers.profiling.runner import profile_target

    if ncu.find_ncu() is None:
        pytest.skip("ncu is not installed on this GPU node")
    target = procs.python_argv(None, MODULE, "target", "halide_unfused")
    settings = ProfileSettings(warmup=2, runs=2, timeout_s=300)
    capability = visible_gpu("gpu", 1.0, 1.0).cuda_capability
    result = profile_target(target, "ncu", settings, tmp_path, SHAPE, capability)
    assert result.status == OK, result.status
    assert result.metrics["ncu.kernels"] == 2 and result.metrics["ncu.runs"] == 2
    assert result.tags["ncu.skip_mode"] == "nvtx" and "kernels.ptx" in result.artifacts
