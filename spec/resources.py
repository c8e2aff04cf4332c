"""Resource guards: refuse, with the estimate, an allocation that cannot fit in the memory
this machine has available, before making it (a command that allocates until the machine
dies loses everything else running on it)."""

from __future__ import annotations

import os

from lmref.spec.errors import ResourceError


def available_bytes() -> int | None:
    """Memory available to a new allocation (Linux MemAvailable, else total physical memory);
    None when the platform says neither."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_allocation(n_bytes: int, what: str, *, force: bool = False, hint: str = "") -> None:
    """Raise ResourceError when `n_bytes` (an estimate of what is about to be allocated for
    `what`) exceeds the memory available, unless `force`.  `hint` tells how to force it."""
    available = available_bytes()
    if force or available is None or n_bytes <= available:
        return
    raise ResourceError(f"{what} needs about {n_bytes / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB "
                        f"of memory available" + (f"; {hint}" if hint else ""))
