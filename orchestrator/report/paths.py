"""Issue #23's agreement over every committed bundle: the same measurement run through Ray (tag
`dispatch` = ray) and through `python -m workers run` (worker-cli), wherever the two sit.

A published report holds one experiment, so its section "Same jobs, both paths" counts that experiment's
pairs; a node's reference runs spread their pairs over several (the sweep's and mobilenet_v1's). This
pools them: a measurement (job key, timing settings, tolerance, seed) that several bundles of one path
hold counts once, its newest record per path.

    python -m orchestrator.report.paths                   # every bundle under results/
    python -m orchestrator.report.paths results/h200/sweep results/h200/worker_cli/sweep
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from orchestrator import analytics
from orchestrator.report.conditions import path_pairs
from orchestrator.report.findings.goals import load_goals
from orchestrator.report.load import ReportInputError, bundle_rows, bundles_from_args


def verdict(pairs: Sequence[analytics.PathPair[dict]]) -> str:
    """The goal of goals.yaml's `dispatch` entry against these pairs, in one line."""
    goal = load_goals().dispatch
    if goal is None:
        return "no agreement goal in conf/report/goals.yaml"
    chosen = analytics.path_agreement(pairs, goal.frameworks)
    median = None if chosen.median_abs_diff is None else 100 * chosen.median_abs_diff
    largest = None if chosen.max_abs_diff is None else 100 * chosen.max_abs_diff
    met = chosen.pairs >= goal.min_pairs and median is not None and median <= goal.max_median_diff_pct
    spread = "" if median is None else f", median absolute difference {median:.2f}%, largest {largest:.2f}%"
    counts = ", ".join(f"{n} {analytics.framework_label(f)}" for f, n in sorted(chosen.per_framework.items()))
    return (
        f"Goal of {goal.source}: {goal.text}. Over these bundles: {chosen.pairs} pair(s) ({counts or 'none'})"
        f"{spread} -> {'met' if met else 'not met'}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        bundles = bundles_from_args(sys.argv[1:] if argv is None else argv)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pairs = path_pairs(bundle_rows(bundles))
    print("| device | shape | variant | via Ray ms | via the worker CLI ms | difference |")
    print("|---|---|---|---|---|---|")
    for p in sorted(pairs, key=lambda p: (p.device, p.framework, p.variant, p.shape)):
        print(
            f"| {p.device} | {p.shape} | {p.variant} | {p.ray.time_ms:.4g} | {p.cli.time_ms:.4g} "
            f"| {100 * p.diff:+.2f}% |"
        )
    print(f"\n{verdict(pairs)} ({len(bundles)} bundle(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
