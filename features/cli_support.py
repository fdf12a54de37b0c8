"""Click glue shared by every stovtal command: user errors become one ``Error:`` line and exit status 1.

``@click.command(cls=Command)`` / ``@click.group(cls=Group)``: a ``StovtalError`` (or an ``OSError`` about a
file the user named) raised anywhere below the command is printed as one line, never as a traceback; a
warning is printed as one ``Warning:`` line, not with the source line that raised it.
"""

from __future__ import annotations

import warnings

import click

from features.errors import StovtalError


def os_error_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """warnings.formatwarning for a command's user: the message and its kind; the code location is for developers."""
    return f"Warning: {message} ({category.__name__})\n"


def _invoke_cleanly(invoke, ctx):
    before, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        return invoke(ctx)
    except StovtalError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:
        raise  # click's own handling: the reader went away
    except OSError as exc:
        raise click.ClickException(os_error_message(exc)) from None
    finally:
        warnings.formatwarning = before


class Command(click.Command):
    def invoke(self, ctx):
        return _invoke_cleanly(super().invoke, ctx)


class Group(click.Group):
    def invoke(self, ctx):
        return _invoke_cleanly(super().invoke, ctx)


class UnitOrAuto(click.ParamType):
    """A number in [0, 1], or the word ``auto`` (a value the program chooses)."""

    name = "auto|0..1"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, float):
            return value
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or not 0.0 <= number <= 1.0:
            self.fail(f"{value!r} is neither auto nor a number in [0, 1]", param, ctx)
        return number


class CountOrAuto(click.ParamType):
    """An integer >= 0, or the word ``auto`` (a value the program chooses)."""

    name = "auto|0,1,2,..."

    def convert(self, value, param, ctx):
        if value == "auto" or (type(value) is int and value >= 0):
            return value
        if not (isinstance(value, str) and value.isdigit()):  # not 2.7, -1, True: they are no count
            self.fail(f"{value!r} is neither auto nor an integer >= 0", param, ctx)
        return int(value)
