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
import random
import sys
from typing import Any

__all__ = ["progress_bar", "progress_context", "watched"]


@contextlib.contextmanager
def progress_bar(total: int, *, enabled: bool = True, description: str = "LR range test"):
    """A rich progress bar on stderr; yields a ``progress(i, lr, loss)`` callback (or ``None``).

    Nothing is shown (not even an empty line) when ``enabled`` is false, stderr is not a terminal,
    or rich is not installed.
    """
    if not enabled:
        yield None
        return
    # rich draws on Python's ``random`` when it is first imported: the bar must leave that state
    # as it found it, like the finder it reports on (every RNG bitwise as it went in).
    python_rng = random.getstate()
    try:
        yield from _rich_bar(total, description)
    finally:
        random.setstate(python_rng)


def _rich_bar(total: int, description: str):
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
        yield _PhasedBar(bar, bar.add_task(description, total=total, lr=0.0, loss=0.0))


class _PhasedBar:
    """The range test's ``progress(i, lr, loss)`` callback, then the verification runs' steps.

    The range test calls it after each of its steps. The verification runs that follow step the
    trainer without calling it: :func:`watched` wraps the trainer so that each of those steps moves
    a second task, "verifying candidates", whose total is the most steps the verification may take
    (it often stops earlier; the bar is transient).
    """

    def __init__(self, bar: Any, task: Any) -> None:
        self._bar, self._task = bar, task
        self._verify_task = None
        self._called_since_step = True
        self.verify_total: int | None = None

    def __call__(self, i: int, lr: float, loss: float) -> None:
        self._bar.update(self._task, completed=i + 1, lr=lr, loss=loss)
        self._called_since_step = True

    def trainer_step(self, lr: float, loss: float) -> None:
        """Called after every trainer step; a step the range test did not report is a verification step."""
        if self._called_since_step:  # a range-test step (its report comes right after it)
            self._called_since_step = False
            return
        if self._verify_task is None:
            self._verify_task = self._bar.add_task("verifying candidates", total=self.verify_total, lr=lr, loss=loss)
            self._bar.update(self._verify_task, advance=1)  # the first one looked like a range-test step
        self._bar.update(self._verify_task, advance=1, lr=lr, loss=loss)


class Watched:
    """A Trainer that reports each step to ``bar.trainer_step(lr, loss)`` (the finder's :class:`_PhasedBar`,
    or ``lrkit autopilot``'s bar); everything else is forwarded."""

    def __init__(self, trainer: Any, bar: Any) -> None:
        self._trainer, self._bar = trainer, bar

    def step(self, lr: float, skip: Any = None) -> float:
        loss = self._trainer.step(lr) if skip is None else self._trainer.step(lr, skip=skip)
        try:
            self._bar.trainer_step(float(lr), float(loss))
        except (TypeError, ValueError):  # a loss that is not a number: the finder will say so
            pass
        return loss

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


def watched(trainer: Any, callback: Any, *, verify_steps: int = 0) -> Any:
    """``trainer``, wrapped so that lrkit's progress bar also follows the verification runs.

    Any other ``callback`` (a user's own, or ``None``) leaves the trainer as it is.

    Example:
        >>> t = object()
        >>> watched(t, print) is t
        True
    """
    if not isinstance(callback, _PhasedBar):
        return trainer
    from lrkit.finder.search import MAX_TRIED

    callback.verify_total = max(int(verify_steps), 0) * MAX_TRIED or None
    return Watched(trainer, callback)


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
