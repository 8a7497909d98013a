"""Writing files and folders so that a failure never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import errno
import fcntl
import json
import os
import shutil
import stat
import uuid
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class UnsafeLockFile(Exception):
    """The lock path is a symbolic link or not a regular file."""


def _temp_sibling(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{suffix}")


def fsync_path(path) -> None:
    """Flushes a file (or a folder's entries) to disk: after a power loss a renamed file holds
    what was written, not nothing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            fsync_path(p)


def write_text(path, text: str) -> Path:
    """Writes `text` to `path` through a temporary file, an fsync and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
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
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
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
        _fsync_tree(tmp)
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
    fsync_path(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path, wait: bool = False):
    """Holds an exclusive lock on file `path` (created if missing) while the block runs.

    Race-free with the removal of the file at release: after taking the OS lock, the open file
    must still be the one at `path` (a process that opened it before its previous holder
    removed it tries again). Never follows a symbolic link (UnsafeLockFile). wait=False:
    LockHeld at once if another process holds it; wait=True: blocks until it is free. An OS
    lock dies with its process, so a crashed holder never blocks the next one.
    """
    path = Path(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeLockFile(f"{path} is a symbolic link") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeLockFile(f"{path} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise LockHeld(os.pread(fd, 200, 0).decode(errors="replace").strip()
                                   ) from None
                raise
            mine = os.fstat(fd)
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)  # its previous holder removed it: lock the file now at `path`
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: see above
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder) -> list[Path]:
    """Removes `.<name>.tmp-<pid>-…` files and folders (and `.old` ones) that `write_text`,
    `atomic_file`, `atomic_dir` and `replace_dir` left behind in `folder` when their process
    died; those of a live process are left alone. Returns what was removed."""
    removed = []
    for p in Path(folder).glob(".*.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def renamed_paths(value, old: Path, new: Path):
    """Returns `value` (JSON data, paths, dataclasses of them) with every path inside folder
    `old` moved to `new`: what a result says after its folder was renamed."""
    old, new = Path(old), Path(new)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: renamed_paths(getattr(value, f.name), old, new)
                                             for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {k: renamed_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed_paths(v, old, new) for v in value]
    if isinstance(value, Path):
        return Path(renamed_paths(str(value), old, new))
    if isinstance(value, str) and (value == str(old) or value.startswith(str(old) + os.sep)):
        return str(new) + value[len(str(old)):]
    return value


def _checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def seal_folder(folder, meta: dict, name: str) -> None:
    """Writes `<folder>/<name>` last: `meta` plus each file's size and BLAKE2b checksum
    (files in subfolders too), so that `sealed_problem` can tell a complete folder."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "blake2b": _checksum(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != name}
    (folder / name).write_text(json.dumps({**meta, "files": files}))


def read_seal(folder, name: str) -> dict:
    try:
        data = json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sealed_problem(folder, name: str) -> str | None:
    """Why sealed folder `folder` cannot be used ("missing", a file missing, of the wrong
    size or checksum), or None when every file is as `seal_folder` wrote it."""
    folder = Path(folder)
    if not folder.exists():
        return "missing"
    files = read_seal(folder, name).get("files")
    if not files:
        return f"no complete {name}"
    for rel, want in files.items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != want["bytes"]:
            return f"{rel} has {p.stat().st_size} bytes, {want['bytes']} were written"
        if _checksum(p) != want["blake2b"]:
            return f"{rel} does not match its checksum"
    return None
