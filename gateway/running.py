"""What a running daemon tells the commands about itself, in its state directory's `run/`: its pid
(`gateway.pid`, locked while it runs) and the configuration it runs with (`configuration.json`: the
file it read, a digest of each setting only a restart changes, and how its last reload went).

Commands read the configuration file themselves; with these they can say when the file no longer
says what the daemon runs with (a restart-only setting edited, not yet restarted), and why a reload
was refused. The standard library only: every command that opens the register reads it."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Any

from gateway.config import RESTART_ONLY, Config

PUBLISHED = "configuration.json"


def daemon_pid(config: Config) -> int | None:
    """The pid of the daemon holding this state directory's lock; -1 if it is held but the pid
    file is unreadable; None when no daemon runs."""
    path = config.run_dir / "gateway.pid"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


def restart_only_digests(config: Config) -> dict[str, str]:
    """Per setting only a restart changes (named as the reload's log line names it), a digest of its
    values: what the daemon runs with can be compared with the file without writing out a password
    a registry URL may hold."""
    out = {}
    for name, section, keys in RESTART_ONLY:
        model = getattr(config.model, section)
        values = model.model_dump(mode="json", include=None if keys is None else set(keys))
        if name == "gateway.state_dir":
            values = str(config.state_dir)  # as resolved: the same text means another folder beside another file
        out[name] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    return out


def publish(config: Config, *, reloaded: bool = False, refused: list[str] | None = None) -> None:
    """Written by the daemon at start and at each reload, taken (`reloaded`) or not (`refused`: the
    reasons, the file's errors). Replaced whole, never half-written."""
    state: dict[str, Any] = {"pid": os.getpid(), "file": str(config.path),
                             "restart_only": restart_only_digests(config)}
    if reloaded or refused is not None:
        state["reload"] = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "refused": refused}
    path = config.run_dir / PUBLISHED
    temporary = path.with_name(f".{PUBLISHED}.{os.getpid()}")
    temporary.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def published(config: Config) -> dict[str, Any] | None:
    """What the daemon running on this state directory published, with `pid`; None when none runs
    (or it has published nothing yet)."""
    pid = daemon_pid(config)
    if pid is None:
        return None
    try:
        state = json.loads((config.run_dir / PUBLISHED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("pid") != pid:
        return None  # left by a daemon before this one
    return state


def restart_pending(config: Config, state: dict[str, Any]) -> list[str]:
    """The restart-only settings whose values in `config` (the file, as a command reads it) are not
    those the daemon that published `state` runs with."""
    running = state.get("restart_only") or {}
    return [name for name, digest in restart_only_digests(config).items() if running.get(name, digest) != digest]


def difference_warning(config: Config) -> str | None:
    """What a command that reads the configuration file says when the running daemon uses other
    values of restart-only settings than the file: they are the file's, not the daemon's, until
    the restart. None when no daemon runs or nothing differs."""
    state = published(config)
    if state is None:
        return None
    names = restart_pending(config, state)
    if not names:
        return None
    read = "" if state.get("file") == str(config.path) else f" (it read {state.get('file')})"
    return (f"{config.path}: {', '.join(names)} differ from what the running daemon (pid {state['pid']}) uses"
            f"{read}: they take effect when it restarts (systemctl restart gateway); until then the daemon "
            "keeps its own")
