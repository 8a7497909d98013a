"""A process's resident memory as an app pays it, from /proc (Linux; elsewhere nothing is read).

`rollup(pid)`: private (anonymous) memory, which only that process holds and the kernel cannot
drop; file-backed pages (the model file, packed weights, libraries), which the kernel can drop
and map back and which processes share; PSS, each shared page divided among its holders.
`mappings()` splits this process's resident memory by mapping (`bundle_passes.py`).

Example:
    >>> rollup(os.getpid())
    {'rss_mb': 231.6, 'private_mb': 88.3, 'file_backed_mb': 143.3, 'pss_mb': 229.9}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple


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


def rollup(pid: int) -> dict:
    """{"rss_mb", "private_mb", "file_backed_mb", "pss_mb"} of process `pid` now (from
    /proc/PID/smaps_rollup), or {} once it has exited or where there is no such file."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    kb = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    if "Rss" not in kb:
        return {}
    return {"rss_mb": kb["Rss"] / 1024, "private_mb": kb.get("Anonymous", 0) / 1024,
            "file_backed_mb": (kb["Rss"] - kb.get("Anonymous", 0)) / 1024,
            "pss_mb": kb.get("Pss", 0) / 1024}


def peaks(samples: list[dict]) -> dict:
    """The largest value of each field over `samples` of `rollup` (each field's own peak)."""
    samples = [s for s in samples if s]
    return {k: round(max(s[k] for s in samples), 1) for k in samples[0]} if samples else {}
