"""The Halide schedules by name: the manual ones (`schedules_cpu`, `schedules_gpu`), Halide's
autoschedulers (`autoschedule`) and the search family (`family`), with the device kinds each supports.

A name is checked here before anything is built, so that an unknown one fails with the list of valid
ones; this module needs no Halide, so the variant registry can list and check names without it.
"""

from __future__ import annotations

import re

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
# Counters in a kernel's name: a Func or Var made again in one process is `output$3` or `block_id_x$2`
# (`output__3`, `block_id_x__2` in PTX and CUPTI, at times `output_3`); LLVM appends `__1` to a name it has
# seen before.
_COUNTER = re.compile(r"_+\d+(?=_|$)")
_KERNEL = re.compile(r"_kernel_(\w+?)_s\d+(?:_|$)")


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


def plain_kernel(kernel: str) -> str:
    """A Halide GPU kernel's name without the counters Halide and LLVM add to it, wherever they fall, so
    that the PTX's entry, the lowered statement's loop and a profiler's row of one kernel compare equal."""
    return _COUNTER.sub("", kernel)


def kernel_func(kernel: str) -> str | None:
    """The Func whose loops a Halide GPU kernel runs: `output` for `_kernel_output__3_s0_y_y_n_block_id_z`,
    `pointwise_intm` (a split reduction's partial sums) for
    `_kernel_pointwise__89_intm_global_wrapper__0_s0_...`; None for a name that is not a Halide kernel's."""
    m = _KERNEL.match(plain_kernel(kernel))
    return m.group(1).removesuffix("_global_wrapper") if m else None
