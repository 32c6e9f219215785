"""A FUSE filesystem that loses what was not synced when the power is cut.

The backing directory plays the disk: it holds exactly what has been made
durable, nothing more. The tree the mount shows lives in this process's memory
(the page cache, as it were) and reaches the backing directory only by the
rules a careful reading of POSIX gives:

- a file's data (and mtime) is durable once that file is fsynced;
- a directory entry (create, rename, unlink, link, mkdir, rmdir) is durable
  once its directory is fsynced; each directory independently, so a rename
  between two directories may end up under both names, or neither;
- `sync` on the control socket makes everything durable.

syncfs(2) and sync(2) never reach an ordinary FUSE server: the kernel sends
FUSE_SYNCFS only on virtiofs connections (fc->sync_fs), and with write-through
caching it has no dirty pages to write back either. So a program under test
reaches "sync everything" through tests/powerloss/shim/sitecustomize.py, which
sends `sync` here after each real syncfs()/sync() on this mount.

`cut` on the control socket pulls the plug: this process exits at once, while
holding the lock that every operation takes, so nothing unsynced reaches the
backing directory and every later operation on the mount fails (ENOTCONN).
What survives is the backing directory; a new server mounted on it is the
machine after the reboot.

Run: python fs.py BACKING MOUNTPOINT CONTROL_SOCKET
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mfusepy


@dataclass(eq=False)
class Node:
    ino: int
    is_dir: bool
    mode: int
    mtime_ns: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)
    links: int = 0  # live names (files); directories have one parent
    handles: int = 0
    # What the disk holds for this inode.
    durable_data: bytes = b""
    durable_mtime_ns: int = 0
    durable_entries: dict[str, int] = field(default_factory=dict)
    durable_links: set[tuple[int, str]] = field(default_factory=set)


ROOT_INO = 1


class LossyFS:
    use_ns = True

    def __init__(self, backing: Path):
        self.backing = backing
        self.mutex = threading.RLock()
        self.nodes: dict[int, Node] = {}
        self.handles: dict[int, int] = {}  # fh -> ino
        self.dirty: set[int] = set()
        self._next_ino = ROOT_INO
        self._next_fh = 1
        root = self._load(backing)
        assert root.ino == ROOT_INO

    # -- the disk as it was found ------------------------------------------
    def _new_node(self, is_dir: bool, mode: int) -> Node:
        node = Node(self._next_ino, is_dir, mode, time.time_ns())
        self._next_ino += 1
        self.nodes[node.ino] = node
        return node

    def _load(self, path: Path) -> Node:
        st = path.lstat()
        node = self._new_node(stat.S_ISDIR(st.st_mode), st.st_mode)
        node.mtime_ns = node.durable_mtime_ns = st.st_mtime_ns
        if node.is_dir:
            for child in sorted(path.iterdir()):
                sub = self._load(child)
                node.entries[child.name] = sub.ino
                sub.links += 1
                sub.durable_links.add((node.ino, child.name))
            node.durable_entries = dict(node.entries)
        else:
            node.durable_data = path.read_bytes()
            node.data = bytearray(node.durable_data)
        return node

    # -- lookups ------------------------------------------------------------
    def _resolve(self, path: str) -> Node:
        node = self.nodes[ROOT_INO]
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise OSError(errno.ENOTDIR, path)
            ino = node.entries.get(part)
            if ino is None:
                raise OSError(errno.ENOENT, path)
            node = self.nodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._resolve(head or "/")
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, path)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh:
            return self.nodes[self.handles[fh]]
        if path is None:
            raise OSError(errno.EBADF, "no path")
        return self._resolve(path)

    def _touch(self, node: Node) -> None:
        node.mtime_ns = time.time_ns()
        self.dirty.add(node.ino)

    def _forget_if_gone(self, node: Node) -> None:
        if node.links == 0 and node.handles == 0 and not node.durable_links and node.ino != ROOT_INO:
            self.nodes.pop(node.ino, None)
            self.dirty.discard(node.ino)

    def _link(self, parent: Node, name: str, node: Node) -> None:
        parent.entries[name] = node.ino
        node.links += 1
        self._touch(parent)

    def _unlink(self, parent: Node, name: str) -> Node:
        node = self.nodes[parent.entries.pop(name)]
        node.links -= 1
        self._touch(parent)
        self._forget_if_gone(node)
        return node

    # -- making things durable ----------------------------------------------
    def _durable_paths(self, node: Node, depth: int = 0) -> list[Path]:
        if node.ino == ROOT_INO:
            return [self.backing]
        if depth > 64:
            return []
        return [path / name for parent_ino, name in sorted(node.durable_links)
                for path in self._durable_paths(self.nodes[parent_ino], depth + 1)]

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def _write_file(self, node: Node, path: Path) -> None:
        if not stat.S_ISREG(node.mode):
            return  # a socket or FIFO: nothing of it outlives the processes using it
        if path.is_dir():
            shutil.rmtree(path)
        tmp = path.with_name(f".{path.name}.powerloss-tmp")
        tmp.write_bytes(node.durable_data)
        os.chmod(tmp, stat.S_IMODE(node.mode))
        os.utime(tmp, ns=(node.durable_mtime_ns, node.durable_mtime_ns))
        os.replace(tmp, path)

    def _materialise(self, node: Node, path: Path, depth: int = 0) -> None:
        if not node.is_dir:
            self._write_file(node, path)
            return
        if path.exists() and not path.is_dir():
            path.unlink()
        path.mkdir(exist_ok=True)
        for existing in list(path.iterdir()):
            if existing.name not in node.durable_entries:
                self._remove(existing)
        if depth < 64:
            for name, ino in node.durable_entries.items():
                self._materialise(self.nodes[ino], path / name, depth + 1)

    def sync_file(self, node: Node) -> None:
        node.durable_data = bytes(node.data)
        node.durable_mtime_ns = node.mtime_ns
        for path in self._durable_paths(node):
            self._write_file(node, path)
        self.dirty.discard(node.ino)

    def sync_dir(self, node: Node) -> None:
        old, new = node.durable_entries, dict(node.entries)
        node.durable_entries = new
        paths = self._durable_paths(node)
        for name, ino in old.items():
            if new.get(name) != ino:
                child = self.nodes[ino]
                child.durable_links.discard((node.ino, name))
                for path in paths:
                    self._remove(path / name)
                self._forget_if_gone(child)
        for name, ino in new.items():
            if old.get(name) != ino:
                child = self.nodes[ino]
                child.durable_links.add((node.ino, name))
                for path in paths:
                    self._materialise(child, path / name)
        self.dirty.discard(node.ino)

    def sync_all(self) -> None:
        with self.mutex:
            dirty = [self.nodes[ino] for ino in sorted(self.dirty) if ino in self.nodes]
            for node in dirty:
                if node.is_dir:
                    self.sync_dir(node)
            for node in dirty:
                if not node.is_dir:
                    self.sync_file(node)

    # -- FUSE operations ----------------------------------------------------
    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1  # SQLite tells files apart by inode number
            config.hard_remove = 1  # no .fuse_hidden files standing in for unlinked open ones
            config.kernel_cache = 1  # nothing changes the files behind the kernel's back
            config.entry_timeout = config.attr_timeout = 30.0

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            node = self._node(path, fh)
            if node.is_dir:
                nlink = 2 + sum(1 for ino in node.entries.values() if self.nodes[ino].is_dir)
                size = 4096
            else:
                nlink, size = node.links, len(node.data)
            return {"st_mode": node.mode, "st_ino": node.ino, "st_nlink": nlink, "st_size": size,
                    "st_uid": 0, "st_gid": 0, "st_blksize": 4096, "st_blocks": (size + 511) // 512,
                    "st_atime": node.mtime_ns, "st_mtime": node.mtime_ns, "st_ctime": node.mtime_ns}

    def access(self, path: str, amode: int) -> int:
        with self.mutex:
            self._resolve(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 24, "f_bfree": 1 << 23,
                "f_bavail": 1 << 23, "f_files": 1 << 20, "f_ffree": 1 << 19, "f_favail": 1 << 19,
                "f_namemax": 255}

    def readdir(self, path: str | None, fh: int) -> list[Any]:
        with self.mutex:
            node = self._node(path, fh)
            return [".", "..", *((name, {"st_ino": ino, "st_mode": self.nodes[ino].mode}, 0)
                                 for name, ino in node.entries.items())]

    def opendir(self, path: str) -> int:
        # A handle, because with nullpath_ok libfuse passes no path to fsyncdir.
        with self.mutex:
            node = self._resolve(path)
            if not node.is_dir:
                raise OSError(errno.ENOTDIR, path)
            return self._open_handle(node)

    def releasedir(self, path: str | None, fh: int) -> int:
        return self.release(path, fh)

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self.mutex:
            self.sync_dir(self._node(path, fh))
        return 0

    def _open_handle(self, node: Node) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = node.ino
        node.handles += 1
        return fh

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            node = self._resolve(path)
            if node.is_dir:
                raise OSError(errno.EISDIR, path)
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                node.data = bytearray()
                self._touch(node)
            return self._open_handle(node)

    def create(self, path: str, mode: int, flags: int) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            if name in parent.entries:
                if flags & os.O_EXCL:
                    raise OSError(errno.EEXIST, path)
                return self.open(path, flags)
            node = self._new_node(False, stat.S_IFREG | stat.S_IMODE(mode))
            self._link(parent, name, node)
            self.dirty.add(node.ino)
            return self._open_handle(node)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            return bytes(self._node(path, fh).data[offset:offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            node = self._node(path, fh)
            if offset > len(node.data):
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            self._touch(node)
            return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.mutex:
            node = self._node(path, fh)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(b"\0" * (length - len(node.data)))
            self._touch(node)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close(2) promises nothing about durability

    def release(self, path: str | None, fh: int) -> int:
        with self.mutex:
            node = self.nodes[self.handles.pop(fh)]
            node.handles -= 1
            self._forget_if_gone(node)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self.mutex:
            self.sync_file(self._node(path, fh))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        # Unix sockets (ZeroMQ's ipc://) are bound here.
        with self.mutex:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise OSError(errno.EEXIST, path)
            self._link(parent, name, self._new_node(False, mode))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise OSError(errno.EEXIST, path)
            node = self._new_node(True, stat.S_IFDIR | stat.S_IMODE(mode))
            self._link(parent, name, node)
        return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            node = self._resolve(path)
            if not node.is_dir:
                raise OSError(errno.ENOTDIR, path)
            if node.entries:
                raise OSError(errno.ENOTEMPTY, path)
            self._unlink(parent, name)
        return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            if self._resolve(path).is_dir:
                raise OSError(errno.EISDIR, path)
            self._unlink(parent, name)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            src_parent, src_name = self._parent(old)
            dst_parent, dst_name = self._parent(new)
            node = self._resolve(old)
            if node.is_dir and (new + "/").startswith(old.rstrip("/") + "/"):
                raise OSError(errno.EINVAL, new)
            target_ino = dst_parent.entries.get(dst_name)
            if target_ino == node.ino:
                return 0
            if target_ino is not None:
                target = self.nodes[target_ino]
                if target.is_dir and (not node.is_dir or target.entries):
                    raise OSError(errno.ENOTEMPTY if node.is_dir else errno.EISDIR, new)
                if node.is_dir and not target.is_dir:
                    raise OSError(errno.ENOTDIR, new)
                self._unlink(dst_parent, dst_name)
            del src_parent.entries[src_name]
            node.links -= 1
            self._touch(src_parent)
            self._link(dst_parent, dst_name, node)
        return 0

    def link(self, target: str, source: str) -> int:
        with self.mutex:
            node = self._resolve(source)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise OSError(errno.EEXIST, target)
            self._link(parent, name, node)
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        with self.mutex:
            node = self._resolve(path or "/")
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        with self.mutex:
            node = self._resolve(path or "/")
            node.mtime_ns = times[1] if times else time.time_ns()
            self.dirty.add(node.ino)
        return 0


def serve_control(fs: LossyFS, control: Path) -> None:
    """One command a connection: `sync` or `cut`, answered with `ok`; `fail-syncs` and `honour-syncs`
    (answered with `ok`) make the `sync`s that follow fail without making anything durable, answered
    with `failed` (the shim's syncfs then fails with EIO, as a failing device's does), or work again."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(control))
    server.listen(16)
    failing = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            command = conn.recv(64).decode().strip()
            if command == "sync" and failing.is_set():
                conn.sendall(b"failed\n")
            elif command == "sync":
                fs.sync_all()
                conn.sendall(b"ok\n")
            elif command in ("fail-syncs", "honour-syncs"):
                (failing.set if command == "fail-syncs" else failing.clear)()
                conn.sendall(b"ok\n")
            elif command == "cut":
                fs.mutex.acquire()  # held until the process is gone: no operation completes after the cut
                conn.sendall(b"ok\n")
                os._exit(0)
            else:
                conn.sendall(b"unknown command\n")

    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main() -> None:
    backing, mountpoint, control = (Path(arg) for arg in sys.argv[1:4])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    fs = LossyFS(backing)
    threading.Thread(target=serve_control, args=(fs, control), daemon=True).start()
    mfusepy.FUSE(fs, str(mountpoint), foreground=True, fsname="powerloss", subtype="powerloss")


if __name__ == "__main__":
    main()
