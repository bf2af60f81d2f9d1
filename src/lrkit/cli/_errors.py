"""Turn user errors into one line on stderr and exit code 2 (never a traceback)."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import typer


class CLIError(Exception):
    """A user-facing error: its message is printed as is, on one line."""


class UserCodeError(CLIError):
    """The user's own code (their target file, function, model or data) raised ``exc``.

    Printed as one ``lrkit: error: ...`` line that says so, followed by the traceback of that
    code (theirs to read, not lrkit's); exit code 2.
    """

    def __init__(self, message: str, exc: BaseException) -> None:
        super().__init__(f"{message}: {type(exc).__name__}: {one_line(exc)} (the traceback of your code follows)")
        self.traceback = "".join(traceback.format_exception(type(exc), exc, _their_frames(exc.__traceback__)))


def _their_frames(tb):
    """The traceback from the first frame that is neither lrkit's nor the import machinery's."""
    import os

    import lrkit

    ours = os.path.dirname(os.path.abspath(lrkit.__file__))
    first = tb
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not (os.path.abspath(name).startswith(ours) or name.startswith("<frozen importlib")):
            return tb
        tb = tb.tb_next
    return first


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
    "sklearn": "examples", "matplotlib": "plot", "ray": "ray", "psycopg": "tune",
}


def check_output(option: str, path: "Path | None", *, directory: bool) -> None:
    """Before any work starts: ``path`` (a file the command will write, or with ``directory`` a
    directory it writes into) can be written -- the directories it needs are created now -- or a
    :class:`CLIError` naming ``option``. A finder, search or training run that took hours is not
    lost at its end to an output path that cannot be written.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> tmp = Path(tempfile.mkdtemp())
        >>> check_output("--plot", tmp / "new" / "lr.png", directory=False)   # tmp/new is made
        >>> try:
        ...     check_output("--report", tmp / "new", directory=False)
        ... except CLIError as exc:
        ...     print(str(exc).split(",")[0])
        --report must be a file name
    """
    import os

    if path is None:
        return
    if directory and path.exists() and not path.is_dir():
        raise CLIError(f"{option} must be a directory, got the file {path}")
    if not directory and path.is_dir():
        raise CLIError(f"{option} must be a file name, got the directory {path}")
    folder = path if directory else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{option}: cannot create the directory {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK) or (not directory and path.exists() and not os.access(path, os.W_OK)):
        raise CLIError(f"{option}: {path} is not writable")


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
    except UserCodeError as exc:
        print(f"lrkit: error: {one_line(exc)}", file=sys.stderr)
        print(exc.traceback.rstrip(), file=sys.stderr)
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
