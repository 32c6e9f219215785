"""`gateway web`: the web register alone, for its own systemd unit behind a reverse proxy."""
from __future__ import annotations

import os

import click

from gateway.cli.state import State, pass_state


@click.command()
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: [web] workers).")
@click.option("--listen", metavar="HOST:PORT", default=None, help="Address to serve on (default: [web] listen).")
@pass_state
def web(state: State, workers: int | None, listen: str | None) -> None:
    """Serve the web register alone (the daemon runs separately against the same registry)."""
    import uvicorn

    from gateway import config as config_mod

    config = state.config
    state.registry().close()  # the registry's schema brought up to date once, before the workers start
    listen = listen or config.model.web.listen
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    # The workers are separate processes: they read the same configuration file.
    os.environ[config_mod.ENV_VAR] = str(config.path)
    # X-Forwarded-For is read by the app itself, from [web] trusted_proxies only.
    uvicorn.run("gateway.web.app:factory", factory=True, host=host.strip("[]"), port=int(port),
                workers=workers or config.model.web.workers, log_config=None, access_log=False,
                server_header=False, proxy_headers=False)
