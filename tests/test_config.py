"""The Hydra config tree: every experiment composes and plans; catalogs, custom shapes, types checked."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig

from kernels import registry
from kernels.layer import LayerShape
from orchestrator.config import CONF_DIR, REPO_ROOT, ConfigError, experiment_names
from orchestrator.plan import make_plan, resolve_device, resolve_shape

MBV1 = [
    "mbv1_112_32_s1", "mbv1_112_64_s2", "mbv1_56_128_s1", "mbv1_56_128_s2", "mbv1_28_256_s1",
    "mbv1_28_256_s2", "mbv1_14_512_s1", "mbv1_14_512_s2", "mbv1_7_1024_s1",
]  # fmt: skip


def cfg_of(*overrides: str) -> DictConfig:
    """The composed config for `overrides`, as `python -m orchestrator` would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_experiments_are_the_four_of_the_issue() -> None:
    assert set(experiment_names()) >= {"fusion_ablation", "mobilenet_v1", "autoschedulers", "smoke"}


@pytest.mark.parametrize("experiment", experiment_names())
def test_every_experiment_composes_and_plans(experiment: str) -> None:
    cfg = cfg_of(f"+experiment={experiment}")
    assert cfg.name == experiment
    jobs = make_plan(cfg)
    assert len(jobs) == len(cfg.variants) * len(cfg.shapes) * len(cfg.devices)
    assert {j.variant for j in jobs} <= set(registry.all_variants())
    assert all(j.versions.get("git") and j.versions.get("halide") for j in jobs)
    assert len({j.key for j in jobs}) == len(jobs)  # keys tell every measurement apart


def test_fusion_ablation_is_the_app_shape_and_nine_mobilenet_blocks_at_batch_1() -> None:
    jobs = make_plan(cfg_of("+experiment=fusion_ablation"))
    shapes = {j.shape.name: j.shape for j in jobs}
    assert list(shapes) == ["app", *MBV1]
    assert shapes["app"] == LayerShape("app", 4, 112, 112, 32, 16, 1)
    assert all(shapes[m].n == 1 for m in MBV1)
    assert (shapes["mbv1_7_1024_s1"].h, shapes["mbv1_7_1024_s1"].c, shapes["mbv1_7_1024_s1"].co) == (
        7,
        1024,
        1024,
    )
    assert {j.device.name for j in jobs} == {"cpu"}
    frameworks = {registry.get(j.variant).framework for j in jobs}
    assert frameworks == {"halide", "tensorflow"}


def test_batch_replaces_n_of_mobilenet_blocks_only() -> None:
    jobs = make_plan(cfg_of("+experiment=mobilenet_v1", "variants=[numpy_ref]"))
    n = {j.shape.name: j.shape.n for j in jobs}
    assert n["app"] == 4
    assert all(n[m] == 32 for m in MBV1)
    jobs = make_plan(cfg_of("+experiment=mobilenet_v1", "variants=[numpy_ref]", "batch=null"))
    assert all(j.shape.n == (4 if j.shape.name == "app" else 1) for j in jobs)


def test_custom_shape_as_a_catalog_entry_and_as_an_inline_spec() -> None:
    cfg = cfg_of(
        "+experiment=smoke",
        "+shape_catalog.mine={n:1,h:30,w:30,c:24,co:40,stride:2}",
        "shapes=[mine,1x30x30x24-40s2,2x9x9x3-5]",
    )
    shapes = [j.shape for j in make_plan(cfg) if j.variant == "numpy_ref"]
    assert [s.name for s in shapes] == ["mine", "1x30x30x24-40s2", "2x9x9x3-5"]
    assert (shapes[0].n, shapes[0].h, shapes[0].c, shapes[0].co, shapes[0].stride) == (1, 30, 24, 40, 2)
    assert (shapes[1].n, shapes[1].h, shapes[1].w, shapes[1].c, shapes[1].co, shapes[1].stride) == (
        1, 30, 30, 24, 40, 2,
    )  # fmt: skip
    assert shapes[2].stride == 1 and shapes[2].n == 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"n": 1, "h": 0, "w": 8, "c": 4, "co": 4}, "h must be a positive integer"),
        ({"n": 1, "h": 8, "w": -8, "c": 4, "co": 4}, "w must be a positive integer"),
        ({"n": 1, "h": 8, "w": 8, "c": 4, "co": 4, "stride": 3}, "stride must be one of [1, 2]"),
        ({"n": 1, "h": 8, "w": 8, "c": 4, "co": 4, "depth_multiplier": 2}, "channel mismatch"),
        ({"n": 1, "h": 8, "w": 8, "c": 4}, "Missing mandatory value"),
        ({"n": 1, "h": 8, "w": 8, "c": 4, "co": 4, "ci": 3}, "Key 'ci' not in 'ShapeConf'"),
        ({"n": 1, "h": "x", "w": 8, "c": 4, "co": 4}, "could not be converted to Integer"),
    ],
)
def test_bad_shapes_fail_with_one_clear_line(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_shape("bad", {"bad": entry}, None)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown shape 'nope'; valid shapes: app, .*NxHxWxC-CO"):
        make_plan(cfg_of("+experiment=smoke", "shapes=[nope]"))
    with pytest.raises(ConfigError, match=r"unknown device 'tpu'; valid devices: cpu, rtx2060, "):
        make_plan(cfg_of("+experiment=smoke", "devices=[tpu]"))
    with pytest.raises(ConfigError, match=r"unknown variant 'nope'; valid variants: .*numpy_ref"):
        make_plan(cfg_of("+experiment=smoke", "variants=[nope]"))
    # a register cap Halide's CUDA runtime cannot take is refused before any job, not by every GPU job
    for bad in ("abc", "8", "300", "true"):
        with pytest.raises(
            ConfigError, match=r"^options\.cuda_max_registers must be an integer in 16\.\.255 or null"
        ):
            make_plan(cfg_of("+experiment=smoke", f"options.cuda_max_registers={bad}"))
    assert (
        make_plan(cfg_of("+experiment=smoke", "options.cuda_max_registers=128"))[0].options[
            "cuda_max_registers"
        ]
        == 128
    )


def test_device_catalog_has_the_datasheet_numbers() -> None:
    catalog = cfg_of("+experiment=smoke").device_catalog
    expected = {  # key: (SMs, fp32 GFLOP/s, GB/s, CUDA capability)
        "rtx2060": (30, 6451, 336, 75),
        "rtx2060s": (34, 7181, 448, 75),
        "rtx2080ti": (68, 13448, 616, 75),
        "rtx3070": (46, 20314, 448, 86),
        "h100": (132, 66900, 3350, 90),
        "h200": (132, 66900, 4800, 90),
    }
    for key, (sms, gflops, gbps, cc) in expected.items():
        d = resolve_device(key, catalog)
        assert (d.kind, d.sm_count, d.peak_gflops, d.mem_gbps, d.cuda_capability) == (
            "cuda",
            sms,
            gflops,
            gbps,
            cc,
        )
        assert d.model.startswith("NVIDIA")
    cpu = resolve_device("cpu", catalog)
    assert (cpu.kind, cpu.peak_gflops, cpu.mem_gbps) == ("cpu", 0, 0)  # 0 = measured on the node


def test_wrong_types_are_rejected_at_composition() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        cfg_of("+experiment=smoke", "timing.min_repeats=abc")
    assert "could not be converted to Integer" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        cfg_of("+experiment=smoke", "batch=many")
    with pytest.raises(MissingConfigException):
        cfg_of("+experiment=nope")


def test_experiment_is_not_in_the_defaults_list() -> None:
    text = (CONF_DIR / "config.yaml").read_text()
    defaults = text.split("defaults:")[1].split("\n\n")[0]
    assert "experiment" not in defaults


def test_tracking_local_is_the_embedded_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = cfg_of("+experiment=smoke")
    assert cfg.tracking.uri == f"sqlite:///{REPO_ROOT}/mlflow/mlflow.db"
    assert cfg.tracking.artifact_root == f"{REPO_ROOT}/mlflow/artifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert cfg_of("+experiment=smoke").tracking.uri == "http://127.0.0.1:5999"
    assert cfg_of("+experiment=smoke", "tracking=server").tracking.artifact_root is None


def test_every_yaml_key_line_has_a_comment_nearby() -> None:
    """House style: every key says what it does; a key line without a comment needs one on its block."""
    missing = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#"), f"{path} starts without a comment saying what it is"
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
                continue
            block_commented = any("#" in lines[j] for j in range(max(0, i - 3), i))
            if "#" not in line and not block_commented and not line.startswith(" "):
                missing.append(f"{path.relative_to(CONF_DIR)}:{i + 1}: {stripped}")
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


@pytest.mark.parametrize("profile", ["none", "ncu", "nsys"])
def test_profile_options_compose_and_are_checked_by_the_profiler(profile: str) -> None:
    from orchestrator.plan import profile_settings

    tool, settings = profile_settings(cfg_of("+experiment=smoke", f"profile={profile}"))
    assert tool == profile and "tool" not in settings
