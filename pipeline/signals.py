"""How a command stops: SIGTERM as Ctrl-C, and a child that dies with the sweep that started it."""

from __future__ import annotations

import ctypes
import os
import signal

DIE_WITH = "GPT2_PIPELINE_DIE_WITH"  # set by a sweep for its points: the sweep's pid


def stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so it stops a command as Ctrl-C does (cleanly)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def die_with_parent() -> None:
    """When $GPT2_PIPELINE_DIE_WITH names our parent, ask Linux for SIGTERM when it dies
    (PR_SET_PDEATHSIG): a killed sweep leaves no point running; if it already died, stop."""
    parent = os.environ.get(DIE_WITH)
    if not parent:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the sweep died before the call above
        raise KeyboardInterrupt
