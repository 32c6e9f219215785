"""ZeroMQ: wake-ups in, events out. Never the only copy of anything.

The daemon binds two sockets (endpoints in [daemon] of the config):

* events (PUB): after each committed state change, a two-frame message
  `[topic, json]`, e.g. `letter.registered` / `{"number": "2026-000123", ...}`.
* wakeup (PULL): other processes (`gateway ingest`, `gateway quarantine retry`)
  push `[b"wake"]` to have the spool scanned now, or
  `[b"event", topic, json]` to have their own committed changes published.

The spool and the registry are the truth; a lost message only delays work
until the next periodic rescan.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

import zmq

log = logging.getLogger("gateway.daemon.events")


def encode(topic: str, body: dict[str, Any]) -> list[bytes]:
    return [topic.encode(), json.dumps(body, ensure_ascii=False, default=str).encode()]


class EventPublisher:
    """The daemon's PUB socket; workers publish from several threads."""

    def __init__(self, context: zmq.Context[Any], endpoint: str, hwm: int):
        self._socket = context.socket(zmq.PUB)
        # PUB drops silently past the high-water mark: size it for bursts.
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        self._lock = threading.Lock()

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        self.publish_frames(encode(topic, body))

    def publish_frames(self, frames: list[bytes]) -> None:
        with self._lock:
            try:
                self._socket.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                log.warning("event dropped (subscribers too slow): %s", frames[0].decode(errors="replace"))

    def close(self) -> None:
        self._socket.close(0)


class DaemonLink:
    """How a command-line process tells a running daemon about its work (best effort)."""

    def __init__(self, endpoint: str):
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 200)
        self._socket.setsockopt(zmq.SNDHWM, 10_000)
        self._socket.connect(endpoint)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass  # no daemon listening: it will find the work at its next scan

    def wake(self) -> None:
        self._send([b"wake"])

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        self._send([b"event", *encode(topic, body)])

    def close(self) -> None:
        self._socket.close()
