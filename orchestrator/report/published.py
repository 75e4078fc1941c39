"""The published reports: conf/reports.yaml lists each report folder with its title and the committed
bundles it is made from; `make reports` (`python -m orchestrator.report --published [NAME ...]`) rebuilds
them into reports/, the same bytes every run for the same data and code (no time stamp; the figures'
pixels depend on the matplotlib version, everything else on nothing but the records).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.report.build import build_report
from orchestrator.report.load import REPO_ROOT, ReportInputError, load_bundles

CONF = REPO_ROOT / "conf" / "reports.yaml"
REPORTS = REPO_ROOT / "reports"
KEYS = ("title", "bundles")


@dataclass(frozen=True)
class Published:
    """One published report: its folder under reports/, its title and its bundles (relative to the
    repository root)."""

    name: str
    title: str
    bundles: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command that rebuilds it alone (named in its findings.md)."""
        return f"python -m orchestrator.report --published {self.name}"


def load_published(path: Path = CONF, root: Path = REPO_ROOT) -> list[Published]:
    """The reports of conf/reports.yaml, checked: each has a title and bundles that exist under `root`
    (one line naming the report and the problem otherwise)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportInputError(
            f"{path}: cannot read the list of published reports ({exc.strerror})"
        ) from None
    except yaml.YAMLError as exc:
        raise ReportInputError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    reports = data.get("reports") if isinstance(data, dict) else None
    if not isinstance(reports, dict) or not reports:
        raise ReportInputError(f"{path}: expected `reports:` mapping each report folder to {', '.join(KEYS)}")
    out = []
    for name, entry in reports.items():
        where = f"{path}: report {name!r}"
        if not isinstance(entry, dict) or sorted(entry) != sorted(KEYS):
            raise ReportInputError(f"{where}: give exactly the keys {', '.join(KEYS)}")
        bundles = entry["bundles"]
        if not isinstance(entry["title"], str) or not entry["title"]:
            raise ReportInputError(f"{where}: title must be text")
        if not isinstance(bundles, list) or not bundles or not all(isinstance(b, str) for b in bundles):
            raise ReportInputError(f"{where}: bundles must be a list of bundle folders under results/")
        for b in bundles:
            if not (root / b / "records.jsonl").is_file():
                raise ReportInputError(f"{where}: {b} is not a results bundle (no records.jsonl)")
        out.append(Published(str(name), entry["title"], tuple(bundles)))
    return out


def build_published(
    out: Path = REPORTS,
    names: Sequence[str] = (),
    *,
    draw: bool = True,
    conf: Path = CONF,
    root: Path = REPO_ROOT,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Rebuild the published reports (all, or those named) under `out`; returns the files written."""
    reports = load_published(conf, root)
    known = [r.name for r in reports]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ReportInputError(f"unknown published report {unknown[0]!r}; valid: {', '.join(known)}")
    written: list[Path] = []
    for report in reports:
        if names and report.name not in names:
            continue
        datasets = load_bundles([Path(b) for b in report.bundles], root=root)
        if len(datasets) != 1:
            found = ", ".join(d.experiment for d in datasets)
            raise ReportInputError(
                f"{conf}: report {report.name!r} mixes experiments ({found}): one a report"
            )
        folder = out / report.name
        files = build_report(datasets[0], folder, report.command, title=report.title, stamp=False, draw=draw)
        written.extend(files)
        say(
            f"{report.name}: {len(datasets[0].rows)} records from {len(report.bundles)} bundle(s) -> {folder}"
        )
    if not names:
        listed = {out / r.name for r in reports}
        stray = sorted(p.parent for p in out.rglob("findings.md") if p.parent not in listed)
        for folder in stray:
            say(f"note: {folder} is not a published report (conf/reports.yaml lists the published ones)")
    return written
