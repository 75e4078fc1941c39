"""Optional profiler pass over a timed job: Nsight Compute counters (or an Nsight Systems timeline).

Runs after timing, in separate processes, so it never disturbs the timing it explains. Entry point:

    profile_job(job, tool, settings, out_dir) -> ProfileResult(status, metrics, tags, artifacts)

`status` is "ok" or one line saying why there is no profile (it is the record's `profile_status`).
"""

from workers.profiling.runner import PROFILE_FILE_TAG, profile_into, profile_job
from workers.profiling.settings import (
    DEFAULT_SECTIONS,
    OK,
    TOOLS,
    ProfileConfigError,
    ProfileResult,
    ProfileSettings,
)

__all__ = [
    "DEFAULT_SECTIONS",
    "OK",
    "PROFILE_FILE_TAG",
    "TOOLS",
    "ProfileConfigError",
    "ProfileResult",
    "ProfileSettings",
    "profile_into",
    "profile_job",
]
