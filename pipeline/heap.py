"""Handing the C heap's freed memory back to the system, where a process waits on a big step.

TensorFlow's CPU tensors come from glibc malloc, in one arena per thread. Memory freed in one
arena does not serve the next allocation from another thread, and it stays resident: anonymous
pages, which the kernel cannot drop (and Colab has no swap). After a training loop or a model
graph built and discarded, that is gigabytes at GPT-2 medium (the distilled student's loop:
7.5 -> 5.0 GB resident once returned), which the next step (another model's training, the
converter's child process) would otherwise add to.
"""

from __future__ import annotations

import ctypes
import gc


def release_freed_memory() -> None:
    """Collects reference cycles, then returns free heap pages to the system (malloc_trim);
    a no-op where the C library has no malloc_trim."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass
