"""The `tune` settings: the group's schema and checks, and the command line split into flags, the experiment's
overrides and the tune group's.

`compose` reads the experiment's config tree (`conf/`, the same overrides as `python -m orchestrator`) and
the `tune` group (`conf/tune/<name>.yaml`, chosen with `tune=NAME`; options `tune.KEY=VALUE`); every key is
explained in conf/tune/default.yaml. Bad input raises ConfigError with one line naming the valid choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import CONF_DIR, ConfigError, TimingConf, group_options
from workers.schema import TimingSpec

FAMILY_STRATEGIES = ("evolve", "random")
AUTO_STRATEGIES = {  # strategy -> (variant, device kinds, whether it has a random knob)
    "adams2019": ("halide_auto_adams2019", ("cpu",), True),
    "anderson2021": ("halide_auto_anderson2021", ("cuda",), True),
    "li2018": ("halide_auto_li2018", ("cpu", "cuda"), False),
    "mullapudi2016": ("halide_auto_mullapudi2016", ("cpu",), False),
}
STRATEGIES = (*FAMILY_STRATEGIES, *AUTO_STRATEGIES)
DB_MODES = ("better", "always", "none")
ARTIFACT_MODES = ("small", "all")
EXIT_BAD_INPUT = 2


@dataclass
class TuneConf:
    """The `tune` group (conf/tune/*.yaml); every key is explained in conf/tune/default.yaml."""

    budget: int = 16
    strategy: str = "evolve"
    generation: int = 8
    parents: int = 3
    explore: float = 0.25
    promote: int = 3
    screen: TimingConf = field(default_factory=lambda: TimingConf(1, 5, 30, 0.05, 0.3, 0.1))
    seed: int = 0
    db: str | None = None
    db_mode: str = "better"
    artifacts: str = "small"
    parallel: int = 1
    job_timeout_s: float = 600.0
    time_limit_s: float = 0.0
    resume: list[str] = field(default_factory=list)


def check_tune(t: TuneConf) -> None:
    """Reject settings that make no sense, in one line naming the valid choices."""
    if t.strategy not in STRATEGIES:
        raise ConfigError(f"unknown tune.strategy {t.strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if t.db_mode not in DB_MODES:
        raise ConfigError(f"unknown tune.db_mode {t.db_mode!r}; valid: {', '.join(DB_MODES)}")
    if t.artifacts not in ARTIFACT_MODES:
        raise ConfigError(f"unknown tune.artifacts {t.artifacts!r}; valid: {', '.join(ARTIFACT_MODES)}")
    sc = t.screen
    if (
        sc.warmup < 0
        or sc.min_repeats < 1
        or sc.max_repeats < sc.min_repeats
        or sc.max_time_s < sc.min_time_s
    ):
        raise ConfigError(
            "tune.screen: need warmup >= 0, 1 <= min_repeats <= max_repeats, min_time_s <= max_time_s"
        )
    for name, low in (("budget", 1), ("generation", 1), ("parents", 1), ("promote", 1), ("parallel", 1)):
        if getattr(t, name) < low:
            raise ConfigError(f"tune.{name} must be >= {low}, got {getattr(t, name)}")
    if t.time_limit_s < 0:
        raise ConfigError(f"tune.time_limit_s must be >= 0 (0: no limit), got {t.time_limit_s}")
    if not 0 <= t.explore <= 1:
        raise ConfigError(f"tune.explore must be in [0, 1], got {t.explore}")
    resume_sources(t)


def resume_sources(t: TuneConf) -> list[Path]:
    """The records files and bundle folders of tune.resume, glob patterns expanded; one that matches
    nothing is an error."""
    sources: list[Path] = []
    for entry in t.resume:
        pattern = str(Path(entry).expanduser())
        found = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
        found = [p for p in found if p.is_file() or (p / "records.jsonl").is_file()]
        if not found:
            raise ConfigError(
                f"tune.resume: {entry!r} names no records file (records.jsonl[.gz]) or results bundle"
            )
        sources.extend(found)
    return list(dict.fromkeys(sources))


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """(flags, Hydra overrides of the experiment's config tree, overrides of the tune group)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.tune", add_help=True)
    parser.add_argument(
        "--local", action="store_true", help="run here without Ray or MLflow (a results bundle)"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (bundle, summary.json); default outputs/tune_*/"
    )
    parser.add_argument("--merge", type=Path, metavar="DB", help="merge another tuning database into tune.db")
    flags, rest = parser.parse_known_args(list(argv))
    unknown = [a for a in rest if a.startswith("--")]
    if unknown:
        raise ConfigError(f"unknown flag {unknown[0]!r}; valid flags: --local, --out DIR, --merge DB")
    tune_args = [
        a for a in rest if a.split("=", 1)[0].lstrip("+~") == "tune" or a.lstrip("+~").startswith("tune.")
    ]
    return flags, [a for a in rest if a not in tune_args], tune_args


def compose(overrides: Sequence[str], tune_args: Sequence[str]) -> tuple[DictConfig, TuneConf]:
    """The experiment's config (Hydra compose API over conf/) and the tune settings, both checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    group = "default"
    dotlist = []
    for arg in tune_args:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "tune":
            group = value
        else:
            dotlist.append(f"{key.removeprefix('tune.')}={value}")
    if group not in group_options("tune"):
        raise ConfigError(
            f"unknown tune option {group!r}; valid tune options: {', '.join(group_options('tune'))}"
        )
    schema = OmegaConf.structured(TuneConf)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(CONF_DIR / "tune" / f"{group}.yaml"))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        valid = ", ".join(f.name for f in dataclasses.fields(TuneConf))
        raise ConfigError(f"tune: {str(exc).splitlines()[0]} (keys: {valid})") from None
    t = OmegaConf.to_object(merged)
    assert isinstance(t, TuneConf)
    check_tune(t)
    return cfg, t


def screen_spec(t: TuneConf) -> TimingSpec:
    """The TimingSpec that screens candidates (tune.screen)."""
    return TimingSpec(**dataclasses.asdict(t.screen))


def db_path(t: TuneConf) -> Path:
    """The tuning database a search starts from and writes to: tune.db, else the repository's."""
    from kernels.halide import tuned

    return Path(t.db).expanduser() if t.db else tuned.DEFAULT_DB
