"""Turn user errors into one line on stderr and exit code 2 (never a traceback)."""
from __future__ import annotations

import sys

import click


class CLIError(Exception):
    """A user-facing error: its message is printed as is, on one line."""


def one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def run(app) -> None:
    """Run the typer ``app``; map bad input to ``lrkit: error: <one line>`` and exit 2."""
    try:
        app(standalone_mode=False)
    except click.exceptions.UsageError as exc:  # bad options, missing arguments
        print(f"lrkit: error: {one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
    except (CLIError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"lrkit: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        print("lrkit: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("lrkit: interrupted", file=sys.stderr)
        sys.exit(130)
