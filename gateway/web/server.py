"""The web register served by uvicorn in a background thread (`gateway run`, tests)."""
from __future__ import annotations

import logging
import threading
import time

from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette

from gateway.config import Config

if TYPE_CHECKING:
    from gateway.registry import Registry

log = logging.getLogger("gateway.web")


class WebServer:
    """uvicorn for one app on host:port in a thread of this process. A thread that is not the
    main thread installs no signal handlers; stop() asks the server to finish.

    Given a configuration, it serves create_app(config) (with its own registry connection unless
    one is given); given an app, that app."""

    def __init__(self, target: Config | Starlette, listen: str, *, registry: Registry | None = None,
                 start_timeout: float = 20.0):
        if isinstance(target, Config):
            from gateway.web.app import create_app

            app = create_app(target, registry=registry)
        else:
            app = target
        self.app = app
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.requested_port = int(port)
        self.start_timeout = start_timeout
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.requested_port,
                                                    log_config=None, access_log=False, lifespan="off",
                                                    proxy_headers=False, server_header=False))
        self.thread: threading.Thread | None = None

    def start(self) -> str:
        """Serve; returns "host:port" once the socket is bound. Raises RuntimeError if uvicorn
        could not start (the port taken, say)."""
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the web register could not listen on {self.host}:{self.requested_port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the web register did not start within {self.start_timeout:.0f} s")
            time.sleep(0.02)
        return self.url.removeprefix("http://")

    def reload(self, config: Config) -> None:
        """A reloaded configuration for the pages; the address it listens on stays (a restart)."""
        from gateway.web.app import reload_app

        reload_app(self.app, config)

    @property
    def port(self) -> int:
        """The bound port (the one chosen by the system when 0 was asked for)."""
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None
