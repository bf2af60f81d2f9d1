"""Write one benchmark's section into BENCHMARKS.md, between markers, leaving the others alone."""
from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path
from typing import Any

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


def task_pool_main(argv: list[str] | None, doc: str, *, section: str, out_path: Path, one: Any, render: Any,
                   line: Any) -> dict:
    """The command line of a benchmark that runs every finder-benchmark task through ``one(name)
    -> (name, row, seconds)`` in worker processes: ``--half``, ``--workers``, ``--no-write``,
    ``--render-only``; rows keep their half of the fixed split (``row["half"]``). The results are
    saved to ``out_path`` and the section ``section`` (``render(rows, seconds)``) written into
    BENCHMARKS.md only after a whole run (both halves, no task skipped); ``line(name, row, seconds)``
    is printed as each task ends."""
    import argparse
    import json
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.finder_tasks import DEV, HELDOUT, available_tasks

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--half", choices=("dev", "heldout", "both"), default="both")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--render-only", action="store_true", help="re-render the section from the saved results")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = json.loads(out_path.read_text())
        publish(section, render(saved["tasks"], saved["seconds"]), write=not args.no_write)
        return saved["tasks"]
    names = [n for n in (*DEV, *HELDOUT) if args.half == "both" or (n in DEV) == (args.half == "dev")]
    tasks, skipped = available_tasks(names)
    for msg in skipped:
        print(msg)
    out, seconds = {}, 0.0
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for name, row, sec in pool.map(one, [t.name for t in tasks]):
            out[name], seconds = row, seconds + sec
            print(line(name, row, sec), flush=True)
    whole = args.half == "both" and not skipped
    if whole:
        out_path.parent.mkdir(exist_ok=True)
        out_path.write_text(json.dumps({"seconds": seconds, "tasks": out}, indent=1))
    publish(section, render(out, seconds), write=whole and not args.no_write)
    return out


def halves(rows: dict) -> list[tuple[str, list[str]]]:
    """``(title, task names)`` for the held-out half, then the development half, of rows that carry
    their half (``row["half"]``: ``"heldout"`` or ``"dev"``); a half without rows is left out."""
    out = []
    for half, title in (("heldout", "Held-out half (the headline)"), ("dev", "Development half")):
        names = [n for n in sorted(rows) if rows[n]["half"] == half]
        if names:
            out.append((title, names))
    return out
