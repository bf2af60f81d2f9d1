"""Turn user errors into one line on stderr and exit code 2 (never a traceback)."""
from __future__ import annotations

import sys

import typer


class CLIError(Exception):
    """A user-facing error: its message is printed as is, on one line."""


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """``name`` from click and from the copy of click that recent typer releases vendor."""
    found: list[type[BaseException]] = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            mod = __import__(module, fromlist=[name])
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if cls is not None and cls not in found:
            found.append(cls)
    return tuple(found)


_USAGE_ERRORS = _click_classes("UsageError")
_NO_ARGS = _click_classes("NoArgsIsHelpError")
_EXITS = tuple({typer.Exit, *_click_classes("Exit")})
_ABORTS = tuple({typer.Abort, *_click_classes("Abort")})


# top-level module -> the lrkit extra that installs it
_EXTRAS = {
    "torch": "torch", "keras": "keras", "jax": "jax", "optax": "jax", "optuna": "tune",
    "lightning": "lightning", "transformers": "transformers", "tensorboard": "tensorboard",
    "sklearn": "examples", "matplotlib": "plot",
}


def missing_dependency_message(exc: ModuleNotFoundError) -> str:
    """``lrkit: error: ...`` line for an optional dependency that is not installed."""
    top = (exc.name or "").split(".")[0]
    extra = _EXTRAS.get(top)
    hint = f": pip install 'lrkit[{extra}]'" if extra else ""
    return f"this command needs the package {top!r}, which is not installed{hint}"


def one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def run(app) -> None:
    """Run the typer ``app``; map bad input to ``lrkit: error: <one line>`` and exit 2."""
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(code) is returned here
    except _NO_ARGS as exc:  # plain `lrkit`: show the help, as a usage error
        print(exc.format_message(), file=sys.stderr)
        sys.exit(2)
    except _USAGE_ERRORS as exc:  # bad options, missing arguments, values of the wrong type
        print(f"lrkit: error: {one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # an optional dependency (an ImportError, not an OSError)
        top = (exc.name or "").split(".")[0]
        if top not in _EXTRAS:
            raise
        print(f"lrkit: error: {missing_dependency_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except (CLIError, ValueError, OSError) as exc:
        print(f"lrkit: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except _EXITS as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except _ABORTS:
        print("lrkit: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("lrkit: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
