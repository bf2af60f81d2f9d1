"""The ``lrkit`` command. The only layer that prints or exits.

Each command group lives in its own module (``_schedule.py``, ``_find.py``, ``_diagnose.py``,
``_demo.py``, ``_tune.py``, ``_autopilot.py``) and registers itself on :data:`app`. Errors in user input (``ValueError``,
``lrkit.cli._errors.CLIError``) become one line on stderr and exit code 2, no traceback.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="lrkit",
    help="Take the guesswork out of the learning rate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

def _version(value: bool) -> None:
    if value:
        import lrkit

        print(f"lrkit {lrkit.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print lrkit's version and exit.",
                                       is_eager=True, callback=_version)) -> None:
    """Take the guesswork out of the learning rate."""


# Command modules register themselves on `app` when imported. A module that is missing
# (not written yet) is simply skipped; an error inside one propagates.
for _mod in ("_schedule", "_find", "_diagnose", "_demo", "_tune", "_autopilot"):
    try:
        importlib.import_module(f"lrkit.cli.{_mod}")
    except ModuleNotFoundError as exc:  # only the command module itself being absent
        if exc.name != f"lrkit.cli.{_mod}":
            raise


def main() -> None:
    """Entry point of the console script and ``python -m lrkit``."""
    from lrkit.cli._errors import run

    run(app)
