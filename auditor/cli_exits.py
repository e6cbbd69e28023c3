"""How the ``audit`` command line turns what happened into one exit code, for every command: 0 every gate
passed, 1 a gate failed, 2 bad usage or bad input (one line starting ``error:``, no traceback), 3 an internal
error, 130 / 143 stopped by SIGINT / SIGTERM. Like the rest of the command line it imports no torch."""

from __future__ import annotations

import os
import signal
import traceback

import click

from detectors.errors import BadInputError

EXIT_INTERNAL = 3


class InputProblem(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class InternalProblem(click.ClickException):
    exit_code = EXIT_INTERNAL

    def show(self, file=None) -> None:
        click.echo(f"internal error: {self.format_message()} (set AUDIT_DEBUG=1 for a traceback; please report it)",
                   err=True)


class Stopped(BaseException):
    """Raised by the SIGTERM handler :func:`main` installs; a BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on the way turns a stop into a gate failure or an internal error."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StoppedProblem(click.ClickException):
    """A run stopped by a signal: the shell's code for it (128 + the signal), never 1 (a gate failed)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum

    def show(self, file=None) -> None:
        click.echo(f"stopped by {self.message}: no results written", err=True)


def _one_line(error: click.UsageError) -> InputProblem:
    """click's usage error (usage, a hint and the error: three lines) as the one line every bad input gets."""
    where = f"; see '{error.ctx.command_path} --help'" if error.ctx is not None else ""
    return InputProblem(f"{error.format_message().rstrip('.')}{where}")


class AuditGroup(click.Group):
    """Turns the library's exceptions into exit codes, once, for every command."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise _one_line(error) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise _one_line(error) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BadInputError as error:
            raise InputProblem(str(error)) from None
        except KeyboardInterrupt:
            raise StoppedProblem(signal.SIGINT) from None
        except Stopped as stop:
            raise StoppedProblem(stop.signum) from None
        except Exception as error:  # the one place an unexpected failure becomes exit code 3
            if os.environ.get("AUDIT_DEBUG"):
                traceback.print_exc()
            raise InternalProblem(f"{type(error).__name__}: {error}") from None
