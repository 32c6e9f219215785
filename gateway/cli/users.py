"""`gateway users`: the people of the web register, their roles, departments and grants.

Run on the server by its operator (whoever may read the state directory); each change is an
audit row naming the operator's own user."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

if TYPE_CHECKING:
    from gateway.services.people import People

from gateway.cli.state import State, actor, fail, pass_state, print_json, wide_console

ROLE_HELP = ("registry (registry office: all letters, triage, routing), member (their departments' letters), "
             "head (their departments, approvals), leader (all departments, instructions), auditor (audit log "
             "and reports), admin (people and operations)")


def _password(value: str | None, from_stdin: bool) -> str | None:
    """The password from --password-stdin, --password, or the terminal (asked twice)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if value is not None:
        return value
    if not sys.stdin.isatty():
        return None
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _people(state: State) -> People:
    from gateway.services.people import People

    return People(state.config, state.registry())


@click.group(help=f"People who sign in to the web register.\n\nRoles: {ROLE_HELP}.")
def users() -> None:
    pass


@users.command("add")
@click.argument("login")
@click.option("--name", default="", help="Full name shown in the register (default: LOGIN).")
@click.option("--email", "emails", multiple=True, help="An address of theirs (repeatable). Department owners, "
              "heads and members in [[departments]] are matched by it.")
@click.option("--department", "departments", multiple=True, help="A department id (repeatable).")
@click.option("--role", "roles", multiple=True, help="A role (repeatable): " + ROLE_HELP + ".")
@click.option("--language", type=click.Choice(["zh", "en"]), help="Language of their pages (default: [web] language).")
@click.option("--password", help="Their password (asked on the terminal when not given; at least 10 characters).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--no-password", is_flag=True, help="No password (single sign-on only, or set later).")
@pass_state
def users_add(state: State, login: str, name: str, emails: tuple[str, ...], departments: tuple[str, ...],
              roles: tuple[str, ...], language: str | None, password: str | None, password_stdin: bool,
              no_password: bool) -> None:
    """Add a person who may sign in as LOGIN."""
    secret = None if no_password else _password(password, password_stdin)
    if secret is None and not no_password:
        fail("give --password, --password-stdin or --no-password (standard input is not a terminal)")
    try:
        person = _people(state).add(login, name=name, emails=list(emails), departments=list(departments),
                                    roles=list(roles), password=secret, language=language,
                                    actor=f"cli:{actor(None)}")
    except ValueError as exc:
        fail(str(exc))
    click.echo(f"added {person.login} ({', '.join(person.roles) or 'no role'}"
               f"{'; ' + ', '.join(person.departments) if person.departments else ''})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@pass_state
def users_list(state: State, as_json: bool) -> None:
    """Everyone, with their effective roles and departments (including those [[departments]] gives)."""
    people = _people(state)
    rows: list[dict[str, Any]] = []
    for record in people.list():
        principal = people.principal(record.login)
        rows.append({"login": record.login, "name": record.name, "emails": record.emails,
                     "roles": sorted(principal.roles) if principal else record.roles,
                     "departments": sorted(principal.departments) if principal else record.departments,
                     "heads": sorted(principal.headed) if principal else [],
                     "disabled": record.disabled, "password": record.has_password, "language": record.language,
                     "two_step": record.two_step_since is not None})
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no people yet: add the first administrator with\n"
                   "  gateway users add NAME --role admin --email ADDRESS")
        return
    table = Table(title=f"{len(rows)} person(s)")
    for column in ("Login", "Name", "E-mail", "Roles", "Departments", "State"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["login"], r["name"], " ".join(r["emails"]), " ".join(r["roles"]) or "-",
                      " ".join(r["departments"]) or "-",
                      "disabled" if r["disabled"] else ("active" if r["password"] else "no password")
                      + (", two-step" if r["two_step"] else ""))
    wide_console().print(table)


@users.command("passwd")
@click.argument("login")
@click.option("--password", help="The new password (asked on the terminal when not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@pass_state
def users_passwd(state: State, login: str, password: str | None, password_stdin: bool) -> None:
    """Set LOGIN's password; their open sessions end."""
    secret = _password(password, password_stdin)
    if secret is None:
        fail("give --password or --password-stdin (standard input is not a terminal)")
    try:
        _people(state).set_password(login, secret, actor=f"cli:{actor(None)}")
    except (LookupError, ValueError) as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    click.echo(f"password of {login} set; their sessions were ended")


@users.command("disable")
@click.argument("login")
@click.option("--enable", is_flag=True, help="Enable again instead.")
@pass_state
def users_disable(state: State, login: str, enable: bool) -> None:
    """Stop LOGIN signing in (their sessions end at once), or with --enable let them again."""
    try:
        _people(state).set_disabled(login, not enable, actor=f"cli:{actor(None)}")
    except LookupError as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    click.echo(f"{login} {'enabled' if enable else 'disabled'}")


@users.command("two-step-off")
@click.argument("login")
@pass_state
def users_two_step_off(state: State, login: str) -> None:
    """Turn LOGIN's two-step sign-in off (a lost phone, no recovery code left); their sessions end.
    They sign in with their password alone until they turn it on again under "My account"."""
    try:
        _people(state).reset_two_step(login, actor=f"cli:{actor(None)}")
    except (LookupError, ValueError) as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    click.echo(f"two-step sign-in of {login} turned off; their sessions were ended")


@users.command("grant")
@click.argument("login")
@click.option("--role", "roles", multiple=True, help="A role to add (repeatable).")
@click.option("--department", "departments", multiple=True, help="A department to add (repeatable).")
@click.option("--letter", help="Let them read this letter's content (a confidential letter, or any for an auditor).")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.option("--revoke", is_flag=True, help="Take the roles, departments or letter away instead.")
@pass_state
def users_grant(state: State, login: str, roles: tuple[str, ...], departments: tuple[str, ...],
                letter: str | None, reason: str, revoke: bool) -> None:
    """Give LOGIN roles, departments, or one letter's content (or --revoke them)."""
    if not (roles or departments or letter):
        fail("name a --role, --department or --letter")
    try:
        changes = _people(state).grant(login, roles=list(roles), departments=list(departments), letter=letter,
                                       reason=reason, revoke=revoke, actor=f"cli:{actor(None)}")
    except (LookupError, ValueError) as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
    click.echo(f"{login}: {', '.join(changes) if changes else 'nothing changed'}")
