"""The command-line conventions both commands (`statesvc`, `pipeline`) follow, in one place:
errors as one line on stderr with exit 2 for usage, SIGTERM as Ctrl-C until a command takes the
signals itself, arguments that must be UTF-8 text, `--version` looked up only when asked."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from . import version

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])


def say_error(prog: str, message: str) -> None:
    """One line on stderr; bytes that are not UTF-8 (an argument from a Latin-1 terminal) escaped."""
    text = " ".join(message.split()).encode("utf-8", "backslashreplace").decode("utf-8")
    click.echo(f"{prog}: error: {text}", err=True)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends a command as Ctrl-C does (a KeyboardInterrupt), until the command installs its
    own handlers (the long-running ones do); restored afterwards, for callers that run us in-process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class OneLineGroup(click.Group):
    """A command group whose usage errors are one line on stderr with exit 2, never click's usage
    block or a traceback. ``prog`` names it in messages; ``expected`` maps an error of the library
    to its exit code (None: a bug, let it raise)."""

    prog = "?"

    def expected(self, exc: Exception) -> int | None:
        return None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        code: Any = OK
        with sigterm_interrupts():
            try:
                rv = super().main(args, prog_name, complete_var, False, **extra)
                code = rv if isinstance(rv, int) else OK  # --help and --version give 0
            except click.exceptions.NoArgsIsHelpError as exc:  # the bare command: the help, as click does
                exc.show()
                code = USAGE
            except click.ClickException as exc:
                say_error(self.prog, exc.format_message())
                code = USAGE if isinstance(exc, click.UsageError) else exc.exit_code
            except click.Abort:  # Ctrl-C, or SIGTERM (above), in a command that does not take signals
                click.echo(f"{self.prog}: interrupted", err=True)
                code = INTERRUPTED
            except BrokenPipeError:  # `statesvc list | head`: the reader has gone; nothing to say
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                code = FAILED
            except Exception as exc:  # noqa: BLE001 (re-raised unless the group expects it)
                code = self.expected(exc)
                if code is None:
                    raise
        sys.exit(code)


class Text(click.ParamType):
    """A string that must be valid UTF-8: it goes into JSON (the state, the wire). An argument typed
    in a terminal of another encoding arrives with undecodable bytes; refused here, in one line."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            str(value).encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{value!r} is not valid UTF-8 text (check the terminal's encoding)", param, ctx)
        return str(value)


TEXT = Text()


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # click.version_option would look the version up at import, costing every command 30 ms
    if value and not ctx.resilient_parsing:
        click.echo(f"{ctx.info_name or getattr(ctx.command, 'prog', '')} {version()}")
        ctx.exit()


version_option = click.option("--version", is_flag=True, expose_value=False, is_eager=True,
                              callback=_show_version, help="Show the version and exit.")
