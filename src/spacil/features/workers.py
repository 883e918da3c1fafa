"""How many image-decoding processes each extraction process starts (``backbone.num_workers``).

Decoding and resizing JPEGs on the CPU is what feeds the GPU during extraction: two workers starve a
modern card. Under torchrun every rank starts its own loader, so the count is per machine and split over
the local ranks (8 workers x 8 ranks would be 64 decoders on one machine).
"""

from __future__ import annotations

import os

#: ``auto`` never starts more decoders per machine than this, nor more than there are CPU cores.
AUTO_MAX_WORKERS = 8


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Processes torchrun started on this machine (1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def loader_workers(setting: int | str, cpus: int | None = None, ranks: int | None = None) -> int:
    """DataLoader workers for this process: ``auto`` is min(8, cores) per machine; an explicit number is
    per machine too; either is divided over the local ranks (at least 1 each when any were asked for)."""
    cpus = available_cpus() if cpus is None else cpus
    ranks = local_ranks() if ranks is None else ranks
    if setting == "auto":
        total = min(AUTO_MAX_WORKERS, cpus)
    elif isinstance(setting, int) and setting >= 0:
        total = setting
    else:
        raise ValueError(f"num_workers must be 'auto' or a count >= 0, got {setting!r}")
    return 0 if total == 0 else max(1, total // ranks)
