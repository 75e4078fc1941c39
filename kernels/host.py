"""Facts about the host CPU that the kernels need: its model name and the cores this process may use.

The tuning database keys a CPU schedule by them (the parallel grain depends on the cores), and the
worker reports them as tags (`workers.hostinfo` re-uses these two functions).
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), which is what the kernels get."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or platform.processor())."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
