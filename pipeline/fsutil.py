"""Writing files and folders so that a failure never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path


def _temp_sibling(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{suffix}")


def write_text(path, text: str) -> Path:
    """Writes `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_file(path, suffix: str = ""):
    """Yields a temporary path; renamed to `path` only if the block succeeds.

    `suffix` keeps a required ending on the temporary name (Keras wants ".weights.h5").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path):
    """Yields an empty temporary folder; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Moves folder `src` to `dst`, replacing an existing `dst` without a window where neither exists."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = _temp_sibling(dst, ".old")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
