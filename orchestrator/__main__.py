"""`python -m orchestrator +experiment=NAME [overrides]`: plan → dispatch → record → summary.

    python -m orchestrator +experiment=fusion_ablation
    python -m orchestrator +experiment=smoke variants=[app] shapes=[1x30x30x24-40s2] timing=quick
    python -m orchestrator +experiment=mobilenet_v1 devices=[h100] dispatch=export
    python -m orchestrator +experiment=sweep devices=[auto] cluster=ray tracking=server

Exit codes (`orchestrator.outcome`): 0 every job of the experiment ok or skipped; 1 a job failed or is
wrong (each listed with its reason at the end of the summary; `allow_failures=true` exits 0 instead);
2 bad input; 130 interrupted. On a resume the experiment's jobs recorded earlier count with this run's.

Bad input (an unknown experiment, variant, shape, device or config option, a shape that makes no
sense, a malformed override, a value of the wrong type) ends with ONE line on stderr naming the valid
choices and exit code 2: no traceback, and nothing started (Ray, MLflow) before the input is valid.
Hydra's own errors are multi-line; `HYDRA_FULL_ERROR=1` makes Hydra raise them to us instead of
printing them, and `_one_line` rewrites them. Set HYDRA_FULL_ERROR=1 yourself to get tracebacks.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from hydra.errors import OverrideParseException as HydraOverrideError
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from orchestrator.config import (
    AUTO_DEVICES,
    CONF_DIR,
    DISPATCH_MODES,
    SCHEMAS,
    ConfigError,
    experiment_names,
    group_options,
    hydra_raises,
)

log = logging.getLogger("orchestrator")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
QUIET_LOGGERS = ("alembic", "mlflow", "ray", "urllib3", "git", "absl", "tensorflow")


# --- the run ----------------------------------------------------------------------------------------
def parent_params(
    cfg: DictConfig, versions: dict[str, str], devices: list[str] | None = None
) -> dict[str, str]:
    """The parent run's params: what was asked for and with which code (`devices`: as resolved)."""
    timing = OmegaConf.to_container(cfg.timing, resolve=True)
    params = {
        "experiment": cfg.name,
        "devices": ",".join(devices or cfg.devices),
        "variants": ",".join(cfg.variants),
        "shapes": ",".join(cfg.shapes),
        "batch": str(cfg.batch),
        "seed": str(cfg.seed),
        "tolerance": repr(float(cfg.tolerance)),
        "retries": str(cfg.retries),
        "git_commit": versions.get("git", "unknown"),
        **{f"version.{k}": v for k, v in versions.items() if k != "git"},
        **{f"timing.{k}": str(v) for k, v in timing.items()},  # type: ignore[union-attr]
    }
    if devices is not None and list(devices) != list(cfg.devices):
        params["devices_requested"] = ",".join(cfg.devices)
    if cfg.stand_in:
        params["stand_in"] = str(cfg.stand_in)
    if cfg.cluster.address:
        params["cluster"] = str(cfg.cluster.address)
    return params


def _device_names(cfg: DictConfig) -> list[str]:
    """The explicit device keys of cfg.devices (without `auto`)."""
    return [d for d in cfg.devices if d != AUTO_DEVICES]


def run(cfg: DictConfig) -> int:
    """Plan the experiment, then export the jobs or run them through Ray into MLflow, then summarise;
    returns the exit code (`orchestrator.outcome`: 1 when a job of the experiment failed or is wrong).

    Through Ray: check the tracking store answers; start or join Ray; resolve devices=[auto] from the
    models the cluster's nodes declare; check the cluster offers every model (one line if not); log any
    journal of this experiment that MLflow still lacks; skip jobs already recorded (unless rerun=true);
    then run the rest, each record journaled before it is logged (orchestrator.sync.Delivery).
    """
    from orchestrator.dispatch import RayDispatcher, export_jobs
    from orchestrator.plan import make_plan, profile_settings, wants_auto_devices

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.dispatch.mode not in DISPATCH_MODES:
        raise ConfigError(f"unknown dispatch.mode {cfg.dispatch.mode!r}; valid: {', '.join(DISPATCH_MODES)}")
    auto = wants_auto_devices(cfg) and cfg.dispatch.mode == "ray"
    # With devices=[auto] the models come from the cluster: everything else is checked before Ray starts.
    jobs = make_plan(cfg, devices=(_device_names(cfg) or ["cpu"]) if auto else None)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    if cfg.dispatch.mode == "export":
        out = Path(cfg.dispatch.out) if cfg.dispatch.out else Path(HydraConfig.get().runtime.output_dir)
        path = export_jobs(jobs, config_yaml, out)
        print(f"wrote {len(jobs)} jobs to {path}")
        print(f"next, where the devices are: python -m workers run {path} --out BUNDLE_DIR")
        print("then here: python -m orchestrator.ingest BUNDLE_DIR")
        return 0
    if auto and cfg.cluster.address is None:
        raise ConfigError(
            "devices=[auto] takes the GPU models declared by the nodes of a Ray cluster: add cluster=ray "
            "(make head; make worker HEAD=host:port GPU=MODEL), or name the devices"
        )

    from orchestrator import resume
    from orchestrator.cluster import auto_devices
    from orchestrator.journal import Journal, journal_root
    from orchestrator.record import Recorder, check_tracking
    from orchestrator.summary import (
        cross_device_artifacts,
        summary_metrics,
    )
    from orchestrator.sync import Delivery, fail_fast_http, sync_all

    for name in QUIET_LOGGERS:  # again: importing mlflow resets its logger to INFO
        logging.getLogger(name).setLevel(logging.WARNING)

    uri = cfg.tracking.uri
    journal_dir = journal_root(uri, cfg.tracking.journal)
    fail_fast_http()
    check_tracking(uri)
    versions = dict(jobs[0].versions)
    dispatcher = RayDispatcher(
        address=cfg.cluster.address,
        num_cpus=cfg.cluster.num_cpus,
        retries=cfg.retries,
        extra_modules=cfg.extra_variant_modules,
        log_to_driver=cfg.cluster.log_to_driver,
        profile=profile_settings(cfg),
        profile_dir=str(Path(HydraConfig.get().runtime.output_dir) / "profiles"),
    )
    devices = {job.device.name: job.device.kind for job in jobs}
    if not auto:
        dispatcher.preflight(devices)
    with dispatcher:
        if cfg.cluster.address is None:
            dispatcher.connect(devices)
        else:
            dispatcher.connect()
            if auto:
                catalog = OmegaConf.to_container(cfg.device_catalog, resolve=True)
                found = auto_devices(dispatcher.view(), catalog, dispatcher.where)  # type: ignore[arg-type]
                names = list(dict.fromkeys([*_device_names(cfg), *found]))
                log.info("devices=[auto]: the cluster declares %s", ", ".join(found))
                jobs = make_plan(cfg, devices=names)
                devices = {job.device.name: job.device.kind for job in jobs}
            dispatcher.check(devices)

        recorder = Recorder(uri, cfg.name, cfg.tracking.artifact_root, cfg.description or None)
        for result in sync_all(journal_dir, cfg.name, only_uri=uri):  # what an earlier run left behind
            print(result.describe(), file=sys.stderr)
        todo, earlier = jobs, {}
        if not cfg.rerun:  # what earlier runs recorded: skipped here, summarised with this run's
            earlier = resume.earlier_records(recorder, journal_dir, cfg.name, uri)
            todo = [job for job in jobs if job.key not in earlier]
            if len(todo) < len(jobs):
                print(resume.describe_skipped(jobs, earlier, cfg.name), file=sys.stderr)
        if not todo:
            print(f"nothing to run: every job of {cfg.name!r} is recorded")
            return _summarise(resume.whole_experiment(jobs, earlier, []), cfg)
        log.info(
            "%s: %d jobs (%d variants x %d shapes x %d devices), MLflow at %s, journal in %s",
            cfg.name,
            len(todo),
            len({j.variant for j in todo}),
            len({j.shape.name for j in todo}),
            len({j.device.name for j in todo}),
            uri,
            journal_dir,
        )
        journal = Journal.create(journal_dir, cfg.name, uri, cfg.tracking.artifact_root)
        with Delivery(recorder, journal) as delivery:
            delivery.start(
                parent_params(cfg, versions, list(devices)),
                tags={
                    "dsconv.source": "ray",
                    "mlflow.source.git.commit": versions.get("git", "unknown"),
                    "host": socket.gethostname(),
                    **({"dsconv.stand_in": str(cfg.stand_in)} if cfg.stand_in else {}),
                },
                artifacts={"config.yaml": config_yaml},
            )
            dispatcher.run(todo, delivery.add)
            whole = resume.whole_experiment(jobs, earlier, delivery.records)  # plan order
            metrics = {**summary_metrics(whole), **resume.counts(whole, len(delivery.records))}
            delivery.finish("FINISHED", metrics, cross_device_artifacts(whole, cfg.name))
    code = _summarise(whole, cfg)
    where = "" if uri.startswith(("http://", "https://")) else " (after `make mlflow-ui`)"
    print(f"runs in the MLflow UI{where}: {recorder.runs_url()}")
    return code


def _summarise(records: list[Any], cfg: DictConfig) -> int:
    """Print the summary of the experiment's records, the cross-device table and each failed or wrong
    job with its reason; returns the exit code."""
    from orchestrator import outcome
    from orchestrator.summary import WIDE, cross_device_table, print_summary

    console = Console(width=None if sys.stdout.isatty() else WIDE)
    print_summary(records, cfg.name, console)
    table = cross_device_table(records, f"{cfg.name}: time on each device (median ms)")
    if table is not None:
        console.print(table)
    outcome.print_failures(records, console)
    code = outcome.exit_code(records, bool(cfg.allow_failures))
    if code != outcome.EXIT_OK:
        print(f"exit {code}: a job failed or is wrong (allow_failures=true exits 0)", file=sys.stderr)
    return code


_bad_input: list[BaseException] = []  # raised inside the task, re-raised after Hydra returns
_exit_codes: list[int] = []  # the task's exit code, used after Hydra returns


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    # Hydra logs "Error executing job with overrides: ..." for an exception leaving the task; bad input
    # is not an error of the job, so it leaves quietly and is reported by main().
    try:
        _exit_codes.append(run(cfg))
    except (ConfigError, OmegaConfBaseException) as exc:
        _bad_input.append(exc)


# --- bad input → one line ----------------------------------------------------------------------------
def _collapse(text: str) -> str:
    """Hydra's multi-line message as one line, without the search path and documentation links."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not line.startswith(
            ("See https://", "provider=", "full_key:", "reference_type=", "object_type=")
        ):
            lines.append(line)
    return " ".join(lines)


def _valid_keys(full_key: str) -> str:
    """`; valid keys of X: ...` for a key under a schema'd node, else ''."""
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    schema = SCHEMAS.get(parent)
    if schema is None or parent in ("shape_catalog", "device_catalog"):
        return ""
    where = parent or "the config"
    return f"; valid keys of {where}: {', '.join(schema.__dataclass_fields__)}"


def _malformed(argv: list[str]) -> str:
    """The first override Hydra's grammar rejects, with the reason."""
    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-"):
            continue
        try:
            parser.parse_overrides([arg])
        except HydraOverrideError as exc:
            reason = _collapse(str(exc))
            return (
                f"malformed override {arg!r}: {reason}; overrides look like key=value, +key=value or "
                "~key, with lists as [a,b] and dicts as {k:v} (quote them in the shell)"
            )
    return "malformed override"


def _one_line(exc: BaseException, argv: list[str]) -> str:
    """A one-line message for an exception caused by bad input."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, HydraOverrideError):
        return _malformed(argv)
    if isinstance(exc, MissingConfigException):
        text = str(exc)
        found = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
        if found:
            group, option = found.groups()
            if group == "experiment":
                return f"unknown experiment {option!r}; valid experiments: {', '.join(experiment_names())}"
            options = ", ".join(group_options(group))
            return f"unknown {group} option {option!r}; valid {group} options: {options}"
        return _collapse(text)
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        message = _collapse(str(exc))
        if isinstance(cause, OmegaConfBaseException):
            full_key = getattr(cause, "full_key", "") or ""
            message = f"{message}: {_collapse(str(cause))}{_valid_keys(full_key)}"
        if "experiment" in message and "No match in the defaults list" in message:
            message += f" (valid experiments: {', '.join(experiment_names())})"
        return message
    if isinstance(exc, OmegaConfBaseException):
        full_key = getattr(exc, "full_key", "") or ""
        return f"config error at {full_key or '?'}: {_collapse(str(exc))}{_valid_keys(full_key)}"
    return _collapse(str(exc)) or type(exc).__name__


_terminated: list[int] = []  # the SIGTERM that stopped the run, if one did


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM takes Ctrl-C's path: a KeyboardInterrupt, so that the parent run ends KILLED, the journal
    is closed and Ray is left (orchestrator.record.deferred_interrupt holds it during atomic steps)."""
    _terminated.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: run Hydra, turning bad input into one line on stderr and exit code 2, and Ctrl-C or
    SIGTERM into a clean stop (exit 130 or 143)."""
    argv = sys.argv[1:]
    signal.signal(signal.SIGTERM, _on_sigterm)
    with hydra_raises() as user_wants_traceback:
        try:
            _hydra_main()
            if _bad_input:
                raise _bad_input[0]
            if _exit_codes and _exit_codes[0]:
                sys.exit(_exit_codes[0])
        except KeyboardInterrupt:
            how = "terminated (SIGTERM)" if _terminated else "interrupted"
            print(
                f"{how} (any MLflow run in progress was ended KILLED; the journal keeps every finished job)",
                file=sys.stderr,
            )
            sys.exit(128 + signal.SIGTERM if _terminated else EXIT_INTERRUPTED)
        except (ConfigError, HydraException, OmegaConfBaseException) as exc:
            if user_wants_traceback:
                raise
            print(f"error: {_one_line(exc, argv)}".replace("\n", " "), file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except Exception as exc:
            if user_wants_traceback or not type(exc).__module__.startswith("mlflow"):
                raise
            # The tracking store refused (unwritable database, server error): runs opened were ended FAILED.
            print(f"error: MLflow: {_collapse(str(exc))}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
