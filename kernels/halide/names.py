"""The Halide schedules by name: the manual ones (`schedules_cpu`, `schedules_gpu`), Halide's
autoschedulers (`autoschedule`) and the search family (`family`), with the device kinds each supports.

A name is checked here before anything is built, so that an unknown one fails with the list of valid
ones; this module needs no Halide, so the variant registry can list and check names without it.
"""

from __future__ import annotations

MANUAL_SCHEDULES = ("app", "unfused", "fused_tile", "fused_cblock")
AUTO_SCHEDULES = ("auto_adams2019", "auto_li2018", "auto_mullapudi2016", "auto_anderson2021")
SCHEDULES = MANUAL_SCHEDULES + AUTO_SCHEDULES
PREFIX = "halide_"  # a schedule's variant is halide_<schedule>
# The parameterised family (`family`): built from options["params"]; served as `halide_family` and,
# with parameters from the tuning database (`tuned`), as `halide_tuned`.
FAMILY = "family"

# Device kinds each schedule supports (the autoschedulers' own limits; see autoschedule.py).
SCHEDULE_KINDS: dict[str, tuple[str, ...]] = {
    **{name: ("cpu", "cuda") for name in MANUAL_SCHEDULES},
    "auto_adams2019": ("cpu",),
    "auto_li2018": ("cpu", "cuda"),
    "auto_mullapudi2016": ("cpu",),
    "auto_anderson2021": ("cuda",),
    FAMILY: ("cpu", "cuda"),
}

DESCRIPTIONS = {
    "app": "the official app's schedule (CPU: channel-slice fusion; GPU: one kernel, shared memory)",
    "unfused": "depthwise into its own buffer, then a register-blocked pointwise (GPU: two kernels)",
    "fused_tile": "depthwise per tile of output pixels for every channel, then the pointwise",
    "fused_cblock": "depthwise per channel block inside the pointwise reduction",
    "auto_adams2019": "Adams2019 autoscheduler (CPU)",
    "auto_li2018": "Li2018 autoscheduler (CPU and GPU)",
    "auto_mullapudi2016": "Mullapudi2016 autoscheduler (CPU)",
    "auto_anderson2021": "Anderson2021 autoscheduler (GPU, parallelism = SM count)",
}

# GPU kernels are named after the Func that owns their block loops (`algorithm.FUNC_NAMES`).
KERNEL_FILTER = r"_kernel_(padded|depthwise|pointwise|output)"


class UnknownScheduleError(ValueError):
    """A schedule name that is not defined; the message lists the valid ones."""


def check_schedule(name: str, kind: str | None = None) -> None:
    """Fail with the list of valid names when `name` is not a schedule (for `kind`, if given)."""
    valid = [s for s in (*SCHEDULES, FAMILY) if kind is None or kind in SCHEDULE_KINDS[s]]
    if name not in valid:
        where = f" for {kind}" if kind else ""
        raise UnknownScheduleError(
            f"unknown Halide schedule {name!r}{where}; valid schedules: {', '.join(valid)}"
        )
