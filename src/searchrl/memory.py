"""Give memory that PyTorch freed back to the operating system between training steps.

On Linux (glibc), a CPU training loop whose tensors change shape from step to step — batches
padded to their longest sequence, growing generation lengths — leaves the freed blocks scattered
over the heap, and glibc keeps them: a 135M-parameter LoRA run reached 6–8 GB of resident memory
after 40 warm-start steps on bf16 weights (and was killed by the kernel's OOM killer on a shared
machine), while the live tensors needed under 1 GB. ``malloc_trim(0)`` after each step returns
those pages and keeps the resident size flat. Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim``); ``True`` if any was released.

    >>> isinstance(release_freed_memory(), bool)
    True
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


__all__ = ["release_freed_memory"]
