"""Crash-safe files of a run directory: atomic writes, leftover temporaries, the one-writer lock."""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from ..errors import UserError, first_line

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` only once it is complete.

    The temporary file is created with mode 0666 minus the umask (like a plain ``open``), lives
    next to ``path`` as ``.NAME.XXXXXXXX.tmp`` and is removed when anything fails (a kill leaves
    it behind; :func:`remove_temporaries` clears those). A failed write (disk full ...) raises
    :class:`UserError` naming ``path``; the old file is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {path}: a parent of it is a file, not a directory") from None
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            mode = tmp.stat().st_mode & 0o777  # 0666 minus the umask
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot write {path}: {first_line(e)}") from None
    try:
        write(str(tmp))
        if tmp.stat().st_mode & 0o777 != mode:  # writers that recreate the file (safetensors) use 0600
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot write {path}: {first_line(e)}; the previous version (if any) is kept") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the ``.NAME.XXXXXXXX.tmp`` files an interrupted :func:`atomic_write` left in ``directory``.

    Only safe while no one else writes there (hold :func:`run_lock`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(f".*{TEMP_SUFFIX}") if recursive else directory.glob(f".*{TEMP_SUFFIX}")
    gone = [p for p in found if p.is_file() and re.fullmatch(r"\..+\.[0-9A-Za-z_]+\.tmp", p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


_LOCKS: dict[Path, list] = {}  # directory -> [file descriptor, nesting count] for locks this process holds


class RunLock:
    """An exclusive lock on a directory for one writing process: ``with run_lock(run_dir): ...``.

    ``flock`` on ``DIR/.lock``, so the kernel releases it when the holder exits or is killed: a
    stale lock cannot outlive its process. The file records the holder (pid, host, start time),
    which a refused second writer names. Re-entrant within one process.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def acquire(self) -> "RunLock":
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"cannot write {self.directory}: it or a parent of it is a file, not a directory") from None
        key = self.directory.resolve()
        if key in _LOCKS:
            _LOCKS[key][1] += 1
            return self
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(path.read_text())
                who = f"pid {holder['pid']} on host {holder['host']}, since {holder.get('since', '?')}"
            except (OSError, ValueError, KeyError, TypeError):
                who = "another process"
            os.close(fd)
            raise UserError(f"{self.directory} is being written by another run ({who}); wait for it to finish, "
                            f"or stop it, or write elsewhere") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        _LOCKS[key] = [fd, 1]
        return self

    def release(self) -> None:
        key = self.directory.resolve()
        entry = _LOCKS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _LOCKS[key]
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(directory: str | Path) -> RunLock:
    return RunLock(directory)


def write_json(path: str | Path, obj: Any) -> None:
    def _write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")

    atomic_write(path, _write)


__all__ = ["LOCK_NAME", "RunLock", "TEMP_SUFFIX", "atomic_write", "remove_temporaries", "run_lock", "write_json"]
