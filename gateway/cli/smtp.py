"""`gateway smtp-passwd`."""
from __future__ import annotations

import click


@click.command("smtp-passwd")
@click.argument("user")
@click.password_option("--password", prompt="Password", help="Read from the terminal when not given.")
def smtp_passwd(user: str, password: str) -> None:
    """Print a line for [smtp] auth_users_file: USER and a salted scrypt hash."""
    from gateway.adapters.smtp import hash_password

    if ":" in user or not user.strip():
        raise click.BadParameter("a user name without ':'", param_hint="USER")
    click.echo(f"{user}:{hash_password(password)}")
