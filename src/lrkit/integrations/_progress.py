"""The range test's progress bar, shared by the framework adapters (no framework import).

:func:`progress_bar` is a context manager yielding the ``progress(i, lr, loss)`` callback that
:func:`lrkit.finder.range_test.find` calls after every step; rich is imported only when a bar is
shown, so the adapters stay importable without it.

Example:
    >>> with progress_bar(10, enabled=False) as callback:
    ...     callback is None
    True
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["progress_bar", "progress_context"]


@contextlib.contextmanager
def progress_bar(total: int, *, enabled: bool = True, description: str = "LR range test"):
    """A rich progress bar on stderr; yields a ``progress(i, lr, loss)`` callback (or ``None``).

    Nothing is shown (not even an empty line) when ``enabled`` is false, stderr is not a terminal,
    or rich is not installed.
    """
    if not enabled:
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        yield None
        return
    console = Console(file=sys.stderr)
    if not console.is_terminal:  # a log file or a pipe: no bar, not even a blank line
        yield None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("lr {task.fields[lr]:.2e}  loss {task.fields[loss]:.4g}"), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(description, total=total, lr=0.0, loss=0.0)

        def update(i: int, lr: float, loss: float) -> None:
            bar.update(task, completed=i + 1, lr=lr, loss=loss)

        yield update


def progress_context(progress: Any, total: int, *, enabled: bool = True):
    """The context the adapters' ``find_lr*`` run the range test in, from their ``progress`` argument.

    ``progress`` is ``True`` (a bar on stderr, if ``enabled``), ``False`` (none) or a callback
    ``progress(i, lr, loss)`` that is used as it is.

    Raises:
        TypeError: ``progress`` is none of these.

    Example:
        >>> with progress_context(print, 10) as callback:
        ...     callback is print
        True
    """
    if callable(progress):
        return contextlib.nullcontext(progress)
    if not isinstance(progress, bool):
        raise TypeError(
            f"progress must be True, False or a callback progress(i, lr, loss), got {type(progress).__name__}"
        )
    return progress_bar(total, enabled=progress and enabled)
