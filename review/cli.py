"""The page's command, `statesvc dashboard`, which statesvc loads by entry point only when it is invoked.

It is registered in the entry-point group `statesvc.commands` (pyproject.toml), so that importing
or running statesvc loads no web framework. This module loads only where the `review` extra is
installed: without it, `statesvc dashboard` says in one line which extra to install and exits 2
(statesvc.cli.load_plugin). The web framework itself is imported when the command runs, so that
`statesvc --help`, which lists this command, stays as quick as the daemon's own commands."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import click

from statesvc.cli import dataset_opt, need_dataset
from statesvc.conventions import LOG_LEVELS, TEXT
from statesvc.notify import log_format

WEB = ("fastapi", "uvicorn", "sse_starlette")  # what the `review` extra installs (pyproject.toml)

for _module in WEB:  # looked up, not imported (a few ms against the framework's second)
    if importlib.util.find_spec(_module) is None:
        raise ModuleNotFoundError(f"No module named {_module!r}", name=_module)


@click.command()
@dataset_opt
@click.option("--host", type=TEXT, default="127.0.0.1", show_default=True, envvar="STATESVC_DASHBOARD_HOST",
              show_envvar=True, help="Address to listen on; one that is not loopback needs --token-file.")
@click.option("--port", type=click.IntRange(1, 65535), default=8321, show_default=True,
              envvar="STATESVC_DASHBOARD_PORT", show_envvar=True, help="Port to listen on.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="STATESVC_DASHBOARD_TOKEN_FILE", show_envvar=True,
              help="File holding a secret token (16+ characters) every request must carry.")
@click.option("--no-analysis", is_flag=True, help="Do not read the takes for the audio flags.")
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True, help="Log verbosity.")
def dashboard(dataset: Path, host: str, port: int, token_file: Path | None, no_analysis: bool,
              log_level: str) -> None:
    """Serve the review dashboard: watch the run, listen, flag, review, regenerate, sync.

    It never writes the state: actions go to the daemon, and are shown done once it acknowledged
    them. It starts with or without a daemon and follows it through restarts. Ctrl-C or SIGTERM
    stops it (exit 0)."""
    need_dataset(dataset, remote_ok=False)
    try:
        from .auth import loopback, read_token
        from .dashboard import serve
        from .hub import Settings
        if not loopback(host) and token_file is None:
            raise click.UsageError(f"--host {host} is not loopback: give --token-file so only who holds the token "
                                   "gets in")
        try:
            token = read_token(token_file) if token_file else None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        logging.basicConfig(level=log_level, stream=sys.stderr,
                            format=log_format("%(asctime)s %(name)s %(levelname)s %(message)s",
                                              "%(name)s %(levelname)s %(message)s"))
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        click.echo(f"dashboard of {dataset} on {url}", err=True)
        serve(Settings(dataset.resolve(), host, port, token, analyze=not no_analysis))
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again: SIGTERM is
        # a KeyboardInterrupt here (sigterm_interrupts), which uvicorn.run swallows; one that comes
        # before it serves ends us here. Either way a stop: exit 0.
        pass
