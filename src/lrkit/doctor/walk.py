"""The files a directory's runs are looked for in: every file under it, but for the directories
that hold no training log of the user's -- hidden ones (``.venv``, ``.git``, ``.cache``,
``.ipynb_checkpoints``), a virtual environment under any name (a directory with a ``pyvenv.cfg``),
installed packages (``site-packages``, ``dist-packages``), ``node_modules`` and ``__pycache__``.
``lrkit diagnose .`` in a project's root would otherwise list the CSV files of the packages
installed in its ``.venv`` (matplotlib's sample data, NumPy's test tables) as runs, and walk tens
of thousands of files to find them. The directory given is always searched, hidden or not.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for part in ("runs/a", ".venv/lib/site-packages/pkg", "env"):
    ...     (d / part).mkdir(parents=True)
    >>> for f in ("runs/a/log.csv", ".venv/lib/site-packages/pkg/data.csv", "env/pyvenv.cfg", "env/x.csv"):
    ...     _ = (d / f).write_text("step,loss\\n0,1\\n")
    >>> [p.relative_to(d).as_posix() for p in files_under(d)]
    ['runs/a/log.csv']
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SKIPPED_DIRS", "files_under", "skipped_dir"]

#: directory names never searched for runs (besides hidden ones and virtual environments)
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "node_modules", "__pycache__"})


def skipped_dir(path: Path) -> bool:
    """Whether a directory (below the one given) holds no training log: hidden, an installed-package
    or cache directory, or a virtual environment."""
    return path.name.startswith(".") or path.name in SKIPPED_DIRS or (path / "pyvenv.cfg").is_file()


def files_under(root: str | Path) -> list[Path]:
    """Every file under ``root`` (sorted; symbolic links to files included, to directories not
    followed, broken ones left out), leaving out :func:`skipped_dir` directories below it."""
    root = Path(root)
    out: list[Path] = []
    for here, dirs, files in os.walk(root):
        base = Path(here)
        dirs[:] = sorted(d for d in dirs if not skipped_dir(base / d))
        out.extend(p for p in (base / f for f in files) if p.is_file())  # not a broken link
    return sorted(out)
