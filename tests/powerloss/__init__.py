"""Power-loss testing: a disk (a FUSE mount, fs.py) whose plug a test can pull.

    disk = PowerLossDisk(tmp_path)     # mounted at disk.mount, empty
    ... run the gateway with its state under disk.mount, env=disk.env() ...
    disk.pull_plug(daemon.pid)          # unsynced writes are gone, the processes too
    disk.power_on()                     # the same mount point, what survived
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_FS = Path(__file__).with_name("fs.py")
_SHIM = Path(__file__).with_name("shim")


def descendants(pid: int) -> list[int]:
    """pid and every process below it, parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


class PowerLossDisk:
    def __init__(self, tmp: Path):
        self.backing = tmp / "disk"
        self.mount = tmp / "mnt"
        self.control = tmp / "disk-control.sock"
        self.log = tmp / "disk.log"
        self.backing.mkdir()
        self.mount.mkdir()
        self._proc: subprocess.Popen[bytes] | None = None
        self.power_on()

    def env(self, *, syncfs: bool = True, no_file_fsync_under: tuple[Path, ...] = ()) -> dict[str, str]:
        """What a gateway process on this disk needs: the syncfs forwarder (fs.py says why).

        syncfs=False makes the process's syncfs() promise nothing; no_file_fsync_under makes
        its os.fsync() of a regular file under those directories a no-op (shim/sitecustomize.py)."""
        path = os.pathsep.join(p for p in (str(_SHIM), os.environ.get("PYTHONPATH", "")) if p)
        return {"PYTHONPATH": path, "POWERLOSS_CONTROL": str(self.control),
                "POWERLOSS_MOUNT": str(self.mount), "POWERLOSS_SYNCFS": "forward" if syncfs else "ignore",
                "POWERLOSS_NO_FILE_FSYNC": os.pathsep.join(str(d) for d in no_file_fsync_under)}

    def power_on(self) -> None:
        assert self._proc is None
        self.control.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([sys.executable, str(_FS), str(self.backing), str(self.mount),
                                           str(self.control)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (os.path.ismount(self.mount) and self.control.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the power-loss disk did not mount:\n{self.log.read_text()}")
            time.sleep(0.02)

    def _command(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(str(self.control))
            conn.sendall(command.encode() + b"\n")
            answer = conn.recv(64)
        assert answer.startswith(b"ok"), f"{command}: {answer!r}"

    def sync(self) -> None:
        """sync(1): everything written so far becomes durable."""
        self._command("sync")

    def fail_syncs(self, failing: bool = True) -> None:
        """From now on, every syncfs() on the disk fails with EIO and makes nothing durable (or
        works again)."""
        self._command("fail-syncs" if failing else "honour-syncs")

    def pull_plug(self, *pids: int) -> None:
        """Power cut: what was not synced is lost at this instant, and the processes
        `pids` (with their children) die with the machine."""
        doomed = [p for pid in pids for p in descendants(pid)]
        self._command("cut")
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._detach()

    def _detach(self) -> None:
        # Lazy: the killed processes may not have let go of the mount yet.
        subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self._proc is not None:
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def unmount(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.mount)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # still busy: whoever holds it gets ENOTCONN
        self._detach()
