"""Question 3 as a rule (`orchestrator.report.fusion_rule`) over the committed bundles: the score the docs
quote (docs/tuning.md, docs/findings.md) per device, and the cross-check against the CPU's quick trials.

The CPU's verdicts use this host's vector unit (`targets.host_vector`: the tile sizes of the named schedules
are the host's). The committed CPU bundle ran on AVX2 (8 fp32 lanes, 16 vector registers); on a host with
another vector unit the rule would judge other schedules than those measured, so the CPU's part is checked
only on an AVX2 host."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kernels.halide.targets import host_vector
from orchestrator.config import REPO_ROOT
from orchestrator.report import fusion_rule

AVX2 = (8, 16)  # (fp32 lanes, vector registers) of the host that measured results/cpu/heldout
ON_AVX2 = host_vector() == AVX2


def _per_device(judged: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for j in judged:
        total[j["device"]] += 1
        right[j["device"]] += bool(j["agree"])
    return {d: (right[d], total[d]) for d in total}


def test_the_rule_scores_what_the_docs_say_over_the_committed_bundles() -> None:
    judged = fusion_rule.judge(fusion_rule.bundle_rows(fusion_rule.bundles_under(REPO_ROOT / "results")))
    per_device = _per_device(judged)
    assert {d: per_device[d] for d in ("h100", "h200")} == {"h100": (22, 24), "h200": (19, 22)}
    misses = {(j["device"], j["shape"]) for j in judged if not j["agree"]}
    assert ("h200", "64x14x14x576-96s1") in misses
    if not ON_AVX2:
        pytest.skip(
            f"the CPU's verdicts need an AVX2 host like the one that measured them; this one: {host_vector()}"
        )
    assert per_device["cpu"] == (7, 12)
    # on the CPU every miss is a job that found unfused faster: the rule says fused on every held-out shape
    assert {j["rule"] for j in judged if j["device"] == "cpu"} == {"fused"}
    assert fusion_rule.summary_line(judged).startswith("picks the faster on 48 of 58 pairs (83%)")


@pytest.mark.skipif(
    not ON_AVX2, reason="the CPU's verdicts need an AVX2 host like the one that measured them"
)
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
