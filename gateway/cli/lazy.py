"""A click group whose subcommands are imported only when one is run or help lists them: a
command that reads the register must not pay for importing the daemon, the archive and the web.

Every subcommand's text arguments and options are checked as they are read: a byte that is not
UTF-8 (typed in a terminal set to GBK, say) is a usage error naming the parameter, not a traceback
from the first place that tries to store, look up or print it."""
from __future__ import annotations

import importlib
from typing import Any

import click


class Text(click.types.StringParamType):
    """Text, refused with a usage error when it holds bytes that are not UTF-8 (Python reads such
    an argument with each byte as a lone surrogate)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        value = super().convert(value, param, ctx)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                            else c.encode("utf-8", "backslashreplace").decode() for c in value)
            self.fail(f"'{shown}' is not UTF-8 text (is the terminal's character set UTF-8?)", param, ctx)
        return value


TEXT = Text()


def check_text(command: click.Command) -> None:
    """Give the command's (and its subcommands') plain text parameters the Text type; paths keep theirs."""
    for param in command.params:
        if type(param.type) is click.types.StringParamType:
            param.type = TEXT
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            check_text(sub)


class LazyGroup(click.Group):
    """`lazy` maps a subcommand's name to "module:attribute"; the module is imported the first
    time the subcommand is looked up (to run it, or for a help listing)."""

    def __init__(self, *args: object, lazy: dict[str, str] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            check_text(command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)
