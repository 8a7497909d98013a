"""This process's resident memory: its mappings, and releasing what the LiteRT-LM runtime's
library left resident once an engine has started (Linux; elsewhere nothing is read or released).

Example:
    >>> eng = litert_lm.Engine(...)
    >>> release_start_up_code()   # about 50 MB fewer resident
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import NamedTuple

MADV_DONTNEED = 4  # Linux


class Mapping(NamedTuple):
    """One memory mapping, as /proc/self/smaps shows it (sizes in kB)."""
    start: int
    end: int
    perms: str
    file: str  # "" or "[heap]", "[stack]", "[anon:...]" for memory no file backs
    rss_kb: int
    anonymous_kb: int | None  # pages not backed by the file (copy-on-write); None: not reported


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings in the text of a /proc/PID/smaps file; a file name keeps its spaces and
    loses the kernel's " (deleted)" suffix."""
    found = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if not fields:
            continue
        if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", fields[0]):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            found.append({"start": start, "end": end, "perms": fields[1],
                          "file": name.removesuffix(" (deleted)"), "rss_kb": 0,
                          "anonymous_kb": None})
        elif fields[0] == "Rss:" and found:
            found[-1]["rss_kb"] = int(fields[1])
        elif fields[0] == "Anonymous:" and found:
            found[-1]["anonymous_kb"] = int(fields[1])
    return [Mapping(**m) for m in found]


def mappings() -> list[Mapping]:
    """This process's mappings; [] where there is no /proc/self/smaps (not Linux)."""
    try:
        return parse_smaps(Path("/proc/self/smaps").read_text())
    except OSError:
        return []


def is_runtime_library(file: str) -> bool:
    """Whether `file` is LiteRT-LM's native library (liblitert-lm.so), wherever it was loaded
    from."""
    return Path(file).name.startswith("liblitert-lm.")


def releasable_code(maps: list[Mapping]) -> list[Mapping]:
    """The runtime library's executable mappings whose pages all come from the file: a page
    this process changed (a debugger's breakpoint) would be lost by dropping it, so a
    mapping holding one, or not saying, is left alone."""
    return [m for m in maps if m.perms == "r-xp" and is_runtime_library(m.file)
            and m.anonymous_kb == 0]


def release_start_up_code() -> None:
    """Drops the resident pages of the runtime library's executable mapping.

    Loading LiteRT-LM's library (126 MB, 218,000 exported symbols) reads its symbol tables
    and relocations, which this build keeps in the executable segment, and starting an
    engine runs code that generating never runs again. madvise(MADV_DONTNEED) leaves the
    mapping in place: the kernel maps a page back from the library file the next time it is
    run. The pages stay in the page cache; what falls is this process's resident set.
    """
    code = releasable_code(mappings())
    if code:  # only on Linux, where libc is this process's own symbols
        libc = ctypes.CDLL(None)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for m in code:
            libc.madvise(m.start, m.end - m.start, MADV_DONTNEED)
