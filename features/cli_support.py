"""Click glue shared by every stovtal command: user errors become one ``Error:`` line and exit status 1.

``@click.command(cls=Command)`` / ``@click.group(cls=Group)``: a ``StovtalError`` (or an ``OSError`` about a
file the user named) raised anywhere below the command is printed as one line, never as a traceback.
"""

from __future__ import annotations

import click

from features.errors import StovtalError


def os_error_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def _invoke_cleanly(invoke, ctx):
    try:
        return invoke(ctx)
    except StovtalError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:
        raise  # click's own handling: the reader went away
    except OSError as exc:
        raise click.ClickException(os_error_message(exc)) from None


class Command(click.Command):
    def invoke(self, ctx):
        return _invoke_cleanly(super().invoke, ctx)


class Group(click.Group):
    def invoke(self, ctx):
        return _invoke_cleanly(super().invoke, ctx)
