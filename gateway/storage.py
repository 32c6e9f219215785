"""Where the message store and the archive live: one interface, a directory as its backend.

Every letter's original is recorded by a name relative to the state directory
("messages/ab/<sha256>.msg"), and every part of the gateway reads it as `state_dir / name`.
With one node that directory is simply under the state directory. With several nodes on one
registry, `[storage] messages_dir` names a directory every node mounts (NFS, CephFS, ...): the
state directory's `messages` becomes a link to it, so names recorded by one node open on every
other, and nothing that reads an original needs to know. The archive is `[storage] archive_dir`
(or `[archive] folder`), used as it is. The spool stays on each node's own disk: it is the
node's queue, drained by that node, as an MTA's is.

Storing an original is a hard link from the spool into the store (gateway/spool); a shared
store on another filesystem gets a copy, synced under a temporary name and then linked into place.
"""
from __future__ import annotations

import os
from pathlib import Path

from gateway.config import Config


class StorageError(Exception):
    """The shared store cannot be set up as configured; the message names what to do."""


def mount(config: Config) -> Path:
    """Make `config.message_dir` the configured store; returns where the originals really are."""
    shared = config.shared_message_dir
    local = config.message_dir
    if shared is None:
        return local
    try:
        shared.mkdir(parents=True, exist_ok=True)
        if local.is_symlink():
            if Path(os.readlink(local)) == shared:
                return shared
            local.unlink()  # the store moved: the link follows the configuration
        elif local.is_dir():
            if any(local.iterdir()):
                raise StorageError(f"{local} holds originals, but [storage] messages_dir is {shared}: move its "
                                   f"contents there (they keep their names), then start again")
            local.rmdir()
        local.parent.mkdir(parents=True, exist_ok=True)
        local.symlink_to(shared, target_is_directory=True)
    except OSError as exc:
        raise StorageError(f"the message store {shared}: {exc.strerror or exc}") from exc
    return shared

