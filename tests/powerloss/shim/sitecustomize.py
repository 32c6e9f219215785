"""Loaded by every Python process of a gateway run on the power-loss disk.

syncfs(2) and sync(2) never reach a FUSE server (see tests/powerloss/fs.py),
so after the real call this forwards each of them on the mount to the
filesystem's control socket as `sync`: the same promise, kept by the only
party that can keep it. POWERLOSS_SYNCFS=ignore forwards nothing instead,
which is what a spool without its syncfs would leave on the disk.

POWERLOSS_NO_FILE_FSYNC (directories joined by os.pathsep) makes os.fsync a
no-op for regular files under those directories, directories themselves still
fsynced: what a spool that forgot its per-file fsync would leave on the disk.
"""
from __future__ import annotations

import ctypes
import os
import socket
import stat
from typing import Any

_CONTROL = os.environ.get("POWERLOSS_CONTROL", "")
_MOUNT = os.environ.get("POWERLOSS_MOUNT", "")
_FORWARD = os.environ.get("POWERLOSS_SYNCFS", "forward") == "forward"
_NO_FILE_FSYNC = tuple(p.rstrip("/") + "/" for p in os.environ.get("POWERLOSS_NO_FILE_FSYNC", "").split(os.pathsep)
                       if p)


def _sync_disk() -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(_CONTROL)
            conn.sendall(b"sync\n")
            return conn.recv(16).startswith(b"ok")
    except OSError:
        return False  # the disk is gone


def _file_fsync_skipped(fd: int) -> bool:
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return path.startswith(_NO_FILE_FSYNC)


def _on_mount(fd: int) -> bool:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return path == _MOUNT or path.startswith(_MOUNT + "/")


def _forwarding_syncfs(real: Any) -> Any:
    def syncfs(fd: int) -> int:
        result = real(fd)
        if result == 0 and _FORWARD and _on_mount(fd) and not _sync_disk():
            ctypes.set_errno(5)  # EIO: nothing was made durable
            return -1
        return result
    return syncfs


if _CONTROL and _MOUNT:
    _cdll_getattr = ctypes.CDLL.__getattr__

    def _getattr(self: ctypes.CDLL, name: str) -> Any:
        func = _cdll_getattr(self, name)
        if name == "syncfs":
            func = _forwarding_syncfs(func)
            setattr(self, name, func)
        return func

    ctypes.CDLL.__getattr__ = _getattr  # type: ignore[method-assign]

    _real_sync = os.sync

    def _sync() -> None:
        _real_sync()
        if _FORWARD:
            _sync_disk()

    os.sync = _sync

if _NO_FILE_FSYNC:
    _real_fsync = os.fsync

    def _fsync(fd: Any) -> None:
        fileno = fd if isinstance(fd, int) else fd.fileno()
        if not _file_fsync_skipped(fileno):
            _real_fsync(fileno)

    os.fsync = _fsync
