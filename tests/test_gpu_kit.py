"""The offline install kit for GPU nodes (`make gpu-kit`, scripts/gpu_kit.py, scripts/install-kit.sh).

- the target's platform tags, the committed base list and the requirements taken from pyproject;
- install-kit.sh checks every part's sha256 before it unpacks anything: a missing or corrupt part is one
  line naming it, exit 2, and nothing is installed; a folder that holds something else is refused;
- the kit built for this machine's Python with KIT_BASE=none (everything a bare Python lacks), installed
  with no index into a fresh virtual environment, runs an MLflow server from its own `mlflow` script and
  the smoke experiment logged to it, importing nothing from anywhere else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install-kit.sh"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _load() -> ModuleType:
    sys.path.insert(0, str(ROOT / "scripts"))  # as `python scripts/gpu_kit.py` has it: kit_parts beside it
    spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "scripts" / "gpu_kit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_kit"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_kit = _load()
import kit_parts  # noqa: E402  (beside gpu_kit.py, on the path _load set)


def test_a_manylinux_target_takes_wheels_for_older_glibc_too() -> None:
    tags = gpu_kit.Target("3.12", "manylinux_2_28_x86_64").platforms()
    assert (
        tags[0] == "manylinux_2_28_x86_64"
        and "manylinux_2_17_x86_64" in tags
        and "manylinux_2_5_x86_64" in tags
    )
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert not any(t.startswith("manylinux_2_29") for t in tags)
    args = gpu_kit.Target("3.12", "manylinux_2_28_x86_64").pip_args()
    assert args[:5] == ["--only-binary=:all:", "--implementation", "cp", "--python-version", "3.12"]


def test_the_base_list_is_the_images_and_the_kit_carries_pyprojects_pins() -> None:
    base = gpu_kit.read_base(str(gpu_kit.DEFAULT_BASE))
    assert {"numpy", "torch", "pyyaml", "protobuf", "rich"} <= set(base) and base["torch"] == "2.11.0"
    assert not {"halide", "ray", "mlflow", "hydra-core", "omegaconf", "antlr4-python3-runtime"} & set(base)
    assert gpu_kit.read_base("none") == {}
    reqs = {r.name: str(r.specifier) for r in gpu_kit.project_requirements()}
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert reqs["halide"] == "==21.0.0" and reqs["ray"] == "==2.60.*" and reqs["mlflow"] == "==3.17.*"
    assert "tensorflow" not in reqs and any(p.startswith("tensorflow") for p in pins)  # left out, said why
    with pytest.raises(gpu_kit.KitError, match="cannot read the base list"):
        gpu_kit.read_base("/nonexistent/base.txt")


def test_extra_requirements_are_checked_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    extra = gpu_kit.extra_requirements(["tensorflow[and-cuda]==2.20.0"])
    assert [(r.name, r.extras, str(r.specifier)) for r in extra] == [("tensorflow", {"and-cuda"}, "==2.20.0")]
    with pytest.raises(SystemExit) as exited:
        gpu_kit.main(["build", "--out", "/nonexistent/kit", "--extra", "tensorflow[and-cuda]=2.20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and "--extra 'tensorflow[and-cuda]=2.20'" in err[0]


def test_the_manifest_says_what_the_kit_needs_of_the_base_and_the_node_checks_it(tmp_path: Path) -> None:
    ray = {"name": "ray", "version": "2.60.0", "requires_dist": [
        "aiohttp>=3.14.4", "click>=7.0", "grpcio; extra == 'default'", "pandas; extra == 'data'",
        "tomli; python_version < '3.11'", "msgpack<2.0.0,>=1.0.0"]}  # fmt: skip
    entries = [{"metadata": ray, "requested_extras": ["default"]}, {"metadata": {"name": "numpy"}}]
    base = dict.fromkeys(["aiohttp", "click", "grpcio", "pandas", "tomli", "rich", "numpy"], "")
    requirement = gpu_kit.Requirement("rich>=13")
    needs = gpu_kit.requires_of_base(entries, {"ray"}, base, gpu_kit.Target("3.12", "x"), [requirement])
    assert needs == {
        "aiohttp": ["ray: aiohttp>=3.14.4"],
        "click": ["ray: click>=7.0"],
        "grpcio": ["ray: grpcio"],
        "rich": ["dsconv-lab: rich>=13"],
    }  # fmt: skip  (pandas: an extra not asked for; tomli: not on 3.12; msgpack: carried, not base)
    manifest = tmp_path / "manifest.json"
    assumed = {"packaging": ["ray: packaging>=999"], "no-such-package-here": ["ray: no-such-package-here"]}
    manifest.write_text(json.dumps({"base": {"assumed": {**assumed, "pytest": ["x: pytest>=1"]}}}))
    warnings = gpu_kit.check_base(manifest)
    assert len(warnings) == 2 and "1 package(s) it lacks: no-such-package-here" in warnings[0]
    assert warnings[1].startswith("warning: ray: packaging>=999, and this Python has packaging ")


# --- install-kit.sh on a small kit --------------------------------------------------------------------
def _small_kit(folder: Path) -> Path:
    """A kit of two parts made by the builder's own compress(), with its manifest."""
    site = folder / "site-src"
    (site / "pkg_a").mkdir(parents=True)
    (site / "pkg_a" / "__init__.py").write_text("VALUE = 'a'\n")
    (site / "bin").mkdir()
    (site / "bin" / "tool").write_text("#!/usr/bin/env python3\nprint('tool')\n")
    (site / "bin" / "tool").chmod(0o755)
    kit = folder / "kit"
    kit.mkdir()
    parts = []
    for name, files in (("k.part01.tar.xz", ["pkg_a/__init__.py"]), ("k.part02.tar.xz", ["bin/tool"])):
        size = kit_parts.compress(site, files, kit / name, 0)
        digest = hashlib.sha256((kit / name).read_bytes()).hexdigest()
        parts.append({"file": name, "sha256": digest, "bytes": size, "files": len(files), "packages": ["a"]})
    manifest = {"target": {"python": PYTHON}, "parts": parts, "base": {"assumed": {}}}
    (kit / "manifest.json").write_text(json.dumps(manifest))
    return kit


def _install(kit: Path, target: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(INSTALL), str(kit), str(target)], env=env, capture_output=True, text=True, timeout=120
    )


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and result.stdout == "", result.stderr
    assert lines[0].startswith("install-kit: ") and all(w in lines[0] for w in words), lines[0]


def test_install_kit_checks_every_part_before_it_unpacks_anything(tmp_path: Path) -> None:
    kit, target = _small_kit(tmp_path), tmp_path / "site"
    second = kit / "k.part02.tar.xz"
    data = second.read_bytes()
    second.unlink()
    _refused(_install(kit, target), "missing part k.part02.tar.xz", "2 parts")
    second.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    _refused(_install(kit, target), "corrupt part k.part02.tar.xz", "sha256")
    assert not target.exists()  # nothing was unpacked
    second.write_bytes(data)

    done = _install(kit, target)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'export PYTHONPATH="{target}:{ROOT}" PATH="{target}/bin:$PATH"'
    assert (target / "pkg_a" / "__init__.py").read_text() == "VALUE = 'a'\n" and os.access(
        target / "bin" / "tool", os.X_OK
    )
    assert _install(kit, target).returncode == 0  # again over itself: replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("not a kit")
    _refused(_install(kit, other), "not empty and holds no kit")
    assert (other / "mine.txt").exists()


# --- the real kit, in a fresh virtual environment ----------------------------------------------------------
@pytest.mark.slow
def test_the_kit_runs_the_smoke_experiment_in_a_fresh_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit, target, venv = tmp_path / "kit", tmp_path / "site", tmp_path / "venv"
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_kit.py"), "build", "--out", str(kit), "--python", PYTHON,
         "--base", "none", "--level", "0"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    manifest = json.loads((kit / "manifest.json").read_text())
    assert (
        all(p["bytes"] <= manifest["part_limit_bytes"] for p in manifest["parts"])
        and len(manifest["parts"]) > 1
    )
    versions = {p["name"]: p["version"] for p in manifest["packages"]}
    assert versions["halide"] == "21.0.0" and versions["hydra-core"] == "1.3.8"
    assert versions["ray"].startswith("2.60.") and versions["mlflow"].startswith("3.17.")
    assert "antlr4-python3-runtime" in versions and "tensorflow" not in versions  # built from its sdist
    left = {(e["package"], e["what"]) for e in manifest["left_out"]}
    assert {("ray", "ray/jars/*"), ("ray", "ray/tune/*"), ("halide", "halide/bin/*")} <= left
    assert ("tensorflow", "the whole package") in left and manifest["base"] == {
        "list": "none",
        "names": 0,
        "assumed": {},
    }
    assert {"bin/ray", "bin/mlflow"} <= set(manifest["console_scripts"]) and "bin/tune" not in manifest[
        "console_scripts"
    ]

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {"PYTHON": str(python), "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path))}
    installed = subprocess.run(
        [str(INSTALL), str(kit), str(target)], env=env, capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0 and "warning" not in installed.stderr, installed.stderr[-3000:]
    assert installed.stdout.startswith(f'export PYTHONPATH="{target}:{ROOT}"')

    # Only the fresh venv, the kit and the repository: no index, no other site-packages.
    node = {
        "PATH": f"{venv}/bin:{target}/bin:/usr/bin:/bin", "PYTHONPATH": f"{target}:{ROOT}",
        "HOME": env["HOME"], "TF_CPP_MIN_LOG_LEVEL": "2", "PIP_NO_INDEX": "1",
    }  # fmt: skip
    where = subprocess.run(
        [str(python), "-c", "import halide, hydra, mlflow, omegaconf, ray, rich;"
         "print('\\n'.join(m.__file__ for m in (halide, hydra, mlflow, omegaconf, ray, rich)))"],
        env=node, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert all(line.startswith(f"{target}/") for line in where.stdout.split()), where.stdout
    for left_out in ("ray.tune", "tensorflow"):
        gone = subprocess.run(
            [str(python), "-c", f"import {left_out}"], env=node, capture_output=True, timeout=120
        )
        assert gone.returncode != 0, f"{left_out} is importable"
    for script in ("ray", "mlflow"):  # their shebang is /usr/bin/env python3: the venv's
        version = subprocess.run([script, "--version"], env=node, capture_output=True, text=True, timeout=120)
        assert version.returncode == 0 and versions[script] in version.stdout, version.stderr[-2000:]

    for name, value in {**node, "MLFLOW_BIN": f"{target}/bin/mlflow"}.items():
        monkeypatch.setenv(name, value)  # the server script inherits them
    server = MlflowServer(tmp_path / "server")
    try:
        server.start()
        smoke = subprocess.run(
            [str(python), "-m", "orchestrator", "+experiment=smoke", "tracking=server",
             f"tracking.journal={tmp_path}/journal", f"hydra.run.dir={tmp_path}/out"],
            cwd=tmp_path, env={**node, "MLFLOW_TRACKING_URI": server.uri}, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert smoke.returncode == 0, smoke.stderr[-3000:]
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("smoke")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
    finally:
        server.stop()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 6
    status = {(c.data.params["variant"], c.data.params["shape"]): c.data.tags["status"] for c in children}
    assert {s for (v, _), s in status.items() if v != "tf_separable"} == {"ok"}, status
    assert {s for (v, _), s in status.items() if v == "tf_separable"} == {"skipped"}  # not in the kit
    tags = children[0].data.tags
    assert tags["halide_version"] == "21.0.0" and tags["tensorflow_version"] == "not installed"
    assert tags["dispatch"] == "ray"
