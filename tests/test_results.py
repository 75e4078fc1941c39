"""The published results: bundles found at any depth, schedule sources stored once per results tree, each
bundle's manifest, and results/ holding only what the published reports (conf/reports.yaml) use.

Bundles here are written by the real writer (`workers.bundle.append_record`) or are the committed ones;
ingesting goes through the real MLflow store (SQLite in a temporary folder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator import ingest as ingest_cmd
from workers import bundle
from workers.schema import Record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _record(key: str, source: str, experiment: str = "tree") -> Record:
    params = {"variant": key.split(".")[0], "shape": "app", "device": "cpu", "experiment": experiment}
    tags = {"status": "ok", "started_at": f"1.{len(key)}"}
    return Record(key, params, {"time_ms": 1.0}, tags, {"schedule.py": source, "job.json": "{}"})


def _tree(root: Path) -> dict[str, list[Record]]:
    """Two bundles one level down, one two levels down, and a folder that is no bundle (notes only)."""
    written = {
        "a/one": [_record("x.1", "# s1\n"), _record("y.1", "# s2\n")],
        "a/two": [_record("x.2", "# s1\n")],
        "b/deep/three": [_record("z.3", "# s3\n")],
    }
    for rel, records in written.items():
        for r in records:
            bundle.append_record(root / rel, r)
    (root / "b" / "notes").mkdir(parents=True)
    (root / "b" / "notes" / "call.sh").write_text("echo not a bundle\n")
    return written


def test_bundles_are_found_at_any_depth_and_a_folder_without_one_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = bundle.find_bundles(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/one", "a/two", "b/deep/three"]
    assert bundle.find_bundles(tmp_path / "a" / "one") == [tmp_path / "a" / "one"]  # a bundle is itself
    said: list[str] = []
    assert bundle.bundles_in([tmp_path / "b", tmp_path / "a" / "two", tmp_path], said.append) == [
        tmp_path / "b" / "deep" / "three", tmp_path / "a" / "two", tmp_path / "a" / "one",
    ]  # fmt: skip
    assert said == [f"{tmp_path / 'b'}: 1 bundle(s) found", f"{tmp_path}: 3 bundle(s) found"]
    with pytest.raises(bundle.BundleError, match=r"no results bundle .* in .*notes or below it"):
        bundle.find_bundles(tmp_path / "b" / "notes")
    with pytest.raises(bundle.BundleError, match="is not a folder"):
        bundle.find_bundles(tmp_path / "missing")


def test_sources_pooled_once_per_tree_read_back_the_same(tmp_path: Path) -> None:
    written = _tree(tmp_path)
    before = {rel: bundle.read_bundle(tmp_path / rel) for rel in written}
    assert sum(1 for _ in tmp_path.rglob("schedule.py")) == 4  # each bundle keeps its own copies

    assert bundle.pool_sources(tmp_path) == (3, 1)  # three distinct sources; the second "# s1" dropped
    pooled = sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("schedule.py"))
    assert pooled == ["sources"] * 3 and not list(tmp_path.rglob("shared"))
    for rel, records in before.items():
        again = bundle.read_bundle(tmp_path / rel)
        assert (
            [r.artifacts for r in again]
            == [r.artifacts for r in records]
            == [r.artifacts for r in written[rel]]
        )
    assert bundle.pool_sources(tmp_path) == (0, 0)  # pooling again changes nothing

    # a new bundle written into the tree keeps its own shared/ and reads from both places
    bundle.append_record(tmp_path / "a" / "four", _record("w.4", "# s4\n"))
    assert [r.artifacts["schedule.py"] for r in bundle.read_bundle(tmp_path / "a" / "four")] == ["# s4\n"]

    # an edited pooled source is refused, naming the file; a bundle moved out of its tree names what it lacks
    source = next((tmp_path / "sources").rglob("schedule.py"))
    source.write_text(source.read_text() + "# edited\n")
    with pytest.raises(bundle.BundleError, match="does not match its digest"):
        [bundle.read_bundle(tmp_path / rel) for rel in written]
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path / "b" / "deep" / "three", moved)
    with pytest.raises(bundle.BundleError, match=r"names .*schedule\.py, which is missing .*sources/"):
        bundle.read_bundle(moved)


def test_ingest_takes_a_tree_says_how_many_bundles_and_logs_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "results"
    _tree(tree)
    bundle.pool_sources(tree)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [str(tree), "--tracking-uri", uri, "--artifact-root", str(tmp_path / "art"), "--no-summary"]
    ingest_cmd.main(args)
    out = capsys.readouterr().out
    assert f"{tree}: 3 bundle(s) found" in out and out.count("logged") == 3
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tree").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["job_key"] for r in children) == ["x.1", "x.2", "y.1", "z.3"]
    ingest_cmd.main(args)  # idempotent
    assert capsys.readouterr().out.count("nothing logged") == 3
    with pytest.raises(SystemExit) as stopped:
        ingest_cmd.main([str(tree / "b" / "notes"), "--tracking-uri", uri])
    assert stopped.value.code == 2
    assert "no results bundle" in capsys.readouterr().err


def test_report_bundle_takes_a_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.report import __main__ as report_cli

    tree = tmp_path / "results"
    _tree(tree)
    assert report_cli.main(["--bundle", str(tree), "--out", str(tmp_path / "out"), "--no-log"]) == 0
    out = capsys.readouterr().out
    assert f"{tree}: 3 bundle(s) found" in out and "tree: 3 records" in out  # x.2 supersedes x.1
    assert report_cli.main(["--bundle", str(tree / "b" / "notes"), "--out", str(tmp_path / "x")]) == 2
    assert "no results bundle" in capsys.readouterr().err


def test_the_committed_results_tree_is_all_bundles_with_one_copy_of_each_source() -> None:
    """Every folder under results/ is a bundle or holds bundles; sources are pooled in results/sources."""
    if not RESULTS.is_dir():
        pytest.skip("results/ is not in this checkout")
    found = bundle.find_bundles(RESULTS)
    assert found and not list(RESULTS.rglob(bundle.SHARED_DIR)), "run pool_sources: a bundle keeps shared/"
    digests = [p.parent.name for p in (RESULTS / bundle.SOURCES_DIR).rglob("*") if p.is_file()]
    assert len(digests) == len(set(digests))
    named = {
        digest
        for b in found
        for line in (b / bundle.RECORDS).read_text().splitlines()
        if line.strip()
        for digest in json.loads(line).get("shared", {}).values()
    }
    assert named == set(digests), "results/sources holds exactly the sources the bundles name"


def test_a_manifest_says_what_the_bundle_holds_and_unknown_for_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator import results

    written = _tree(tmp_path)
    one = tmp_path / "a" / "one"
    (one / "run.log").write_text("jobs ...\nwall 3.0 s for 2.5 s of jobs in one worker\n")
    results.main(["manifest", str(tmp_path / "a"), "--command", "python -m workers run jobs.json"])
    assert f"{tmp_path / 'a'}: 2 bundle(s) found" in capsys.readouterr().out
    made = json.loads((one / "manifest.json").read_text())
    assert made["command"] == "python -m workers run jobs.json" and made["experiment"] == "tree"
    assert made["records"] == {"total": len(written["a/one"]), "ok": 2}
    assert made["wall"] == "wall 3.0 s for 2.5 s of jobs in one worker"
    assert made["date"] == "1970-01-01" and made["first_start"].startswith("1970-01-01T00:00:01")
    # what the records do not hold is unknown, never filled in
    assert made["commit"] == made["versions"]["halide"] == made["machine"]["gpu_txt"] == "unknown"
    assert set(made["derived_from"]) >= {"command", "commit", "date", "machine", "versions"}
    # a manifest already there (an export's) keeps its keys; --note adds one
    (one / "manifest.json").write_text(json.dumps({"experiment": "exported", "runs": [1]}))
    results.main(["manifest", str(one), "--note", "a re-run"])
    again = json.loads((one / "manifest.json").read_text())
    assert again["experiment"] == "exported" and again["runs"] == [1] and again["note"] == "a re-run"
    assert again["command"] == "unknown"
    with pytest.raises(SystemExit) as stopped:
        results.main(["manifest", str(tmp_path / "b" / "notes")])
    assert stopped.value.code == 2 and "no results bundle" in capsys.readouterr().err


def test_every_committed_bundle_has_a_manifest_that_matches_its_records() -> None:
    from orchestrator import results

    if not RESULTS.is_dir():
        pytest.skip("results/ is not in this checkout")
    for b in bundle.find_bundles(RESULTS):
        path = b / "manifest.json"
        assert path.is_file(), (
            f"{b.relative_to(ROOT)} has no manifest.json (python -m orchestrator.results manifest)"
        )
        made = json.loads(path.read_text())
        assert made["command"] and made["command"] != "unknown", f"{path}: say which command made it"
        derived = results.derive(b)
        for key in ("commit", "date", "machine", "versions", "records", "roofs", "wall"):
            assert made[key] == derived[key], f"{path}: {key} differs from what the bundle holds"
