"""Question 3 as a rule (`orchestrator.report.fusion_rule`) over the committed bundles: the score the docs
quote (docs/tuning.md, docs/findings.md) per device, and the cross-check against the CPU's quick trials.

The CPU's verdicts use this host's vector unit (`targets.host_vector`: the tile sizes of the named schedules
are the host's), which is the committed CPU bundle's (AVX2, 2 cores)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.config import REPO_ROOT
from orchestrator.report import fusion_rule


def _per_device(judged: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for j in judged:
        total[j["device"]] += 1
        right[j["device"]] += bool(j["agree"])
    return {d: (right[d], total[d]) for d in total}


def test_the_rule_scores_what_the_docs_say_over_the_committed_bundles() -> None:
    judged = fusion_rule.judge(fusion_rule.bundle_rows(fusion_rule.bundles_under(REPO_ROOT / "results")))
    assert _per_device(judged) == {"h100": (22, 24), "h200": (19, 22), "cpu": (7, 12)}
    misses = {(j["device"], j["shape"]) for j in judged if not j["agree"]}
    # on the CPU every miss is a job that found unfused faster: the rule says fused on every held-out shape
    assert {j["rule"] for j in judged if j["device"] == "cpu"} == {"fused"}
    assert ("h200", "64x14x14x576-96s1") in misses
    assert fusion_rule.summary_line(judged).startswith("picks the faster on 48 of 58 pairs (83%)")


def test_the_cpu_quick_trials_cross_check_the_jobs_verdict() -> None:
    bundle = REPO_ROOT / "results" / "cpu" / "heldout"
    trials = fusion_rule.judge_trials(bundle / fusion_rule.QUICK_DB, fusion_rule.bundle_rows([bundle]))
    assert len(trials) == 12 and {j["device"] for j in trials} == {"cpu"}
    assert [j["shape"] for j in trials if not j["agree"]] == ["3x17x23x40-24s1"]
    # the same schedules timed in one process turn the jobs' verdict on six of the twelve shapes: the five
    # where the jobs found unfused faster, and 3x17x23x40 the other way
    jobs = {j["shape"]: j["faster"] for j in fusion_rule.judge(fusion_rule.bundle_rows([bundle]))}
    flipped = sorted(j["shape"] for j in trials if jobs[j["shape"]] != j["faster"])
    turned = ["16x24x24x144-24s1", "16x28x28x192-32s1", "1x112x112x96-24s2", "2x14x14x480-80s1"]
    assert flipped == sorted([*turned, "32x7x7x960-160s1", "3x17x23x40-24s1"])


def test_a_bundle_without_quick_trials_gives_no_cross_check(tmp_path: Path) -> None:
    db = tmp_path / fusion_rule.QUICK_DB
    db.write_text('{"format": 1, "entries": {"k": {"device": "cpu", "shape": {}, "trials": []}}}')
    assert fusion_rule.judge_trials(db, []) == []
