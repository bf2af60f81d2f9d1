"""Write one benchmark's section into BENCHMARKS.md, between markers, leaving the others alone."""
from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = "# lrkit benchmarks\n\nEvery figure below was produced by the command shown above it, on the machine named there.\n"


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {date.today().isoformat()}"


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md with ``markdown``."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def publish(name: str, markdown: str, *, write: bool) -> None:
    """Print a benchmark's section, and write it into BENCHMARKS.md (:func:`write_section`) when
    ``write`` (off for ``--no-write`` and for partial runs: a subset of tasks or one half)."""
    print(markdown)
    if write:
        write_section(name, markdown)
