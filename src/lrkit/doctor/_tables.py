"""Log files as columns: the format readers behind :func:`lrkit.doctor.logs.read_log`.

Every reader returns a :class:`Table`: the column names in file order, one float64 array per
numeric column with a boolean ``present`` mask (an empty cell is absent; a logged ``nan`` is
present), and a way to name the line a row came from (for error messages).

CSV is parsed column-wise with NumPy (:func:`numpy.loadtxt`'s C parser on the numeric columns;
empty cells are marked before parsing), with no Python object per row: a 2-million-row log costs
a few seconds and memory of the order of the file. A file with quoted cells, ragged rows or a
cell that is not a number falls back to Python's :mod:`csv` module, which finds the line and
column to name in the error.

A live log's last line may still be being written: when the text does not end with a newline
and its last line is incomplete (fewer cells than the header, a cell that is not a number, or
malformed JSON), that line is ignored.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["LogFormatError", "Table", "csv_table", "jsonl_table", "rows_table", "decode"]

Progress = Callable[[str, float], None]


#: cells that mean "no value" (Keras' CSVLogger writes NA for a metric an epoch did not log)
MISSING = frozenset({"", "na", "n/a", "null", "none"})


def _missing(s: str) -> bool:
    return s.strip().lower() in MISSING


class LogFormatError(ValueError):
    """A log that cannot be read; the message names the file and, where it applies, the line."""


# an empty CSV cell is written as this number before NumPy parses the column (no real log
# holds it: it is the largest negative double but one ulp, printed with 17 digits)
_EMPTY = -1.7976931348623155e308
_EMPTY_TXT = "-1.7976931348623155e308"


@dataclass
class Table:
    """Columns of a log before names are normalised.

    ``lines`` maps a row index to the line number in the file (``None``: not known, then
    :meth:`where` raises :class:`NeedLines` and the reader re-parses with line numbers);
    ``label`` maps a row index to a location for in-memory and JSON sources.
    """

    source: str
    names: list[str]
    values: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    raw: Callable[[str, int], Any] | None = None  # the cell as written, for messages
    lines: np.ndarray | None = None
    label: Callable[[int], str] | None = None
    header_at: str | None = None
    dropped: list[str] = field(default_factory=list)  # text columns that were left out

    @property
    def n(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def where(self, i: int) -> str:
        if self.label is not None:
            return self.label(i)
        if self.lines is None:
            raise NeedLines
        return f"{self.source}:{int(self.lines[i])}"

    def cell(self, name: str, i: int) -> Any:
        if self.raw is not None:
            return self.raw(name, i)
        v = self.values[name][i]
        return v


class NeedLines(Exception):
    """Raised by :meth:`Table.where` on a fast-parsed table: re-parse with line numbers."""


# ------------------------------------------------------------------------------ text
def decode(data: bytes, source: str, encoding: str = "utf-8") -> str:
    """The bytes as text (UTF-8, or UTF-16 with a byte-order mark, as Windows tools write it);
    a byte that is not UTF-8 is a LogFormatError naming its line."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise LogFormatError(f"{source}:1: starts with a UTF-16 byte-order mark but is not UTF-16 text") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LogFormatError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the log as UTF-8"
        ) from None


def to_float(raw: Any, where: str, col: str) -> float:
    """A cell as a float (``nan`` for ``None``/empty); a LogFormatError naming ``where`` otherwise."""
    if raw is None:
        return math.nan
    if isinstance(raw, bool):
        raise LogFormatError(f"{where}: column {col!r} is not a number: {raw!r}")
    if isinstance(raw, (int, float, np.integer, np.floating)):
        return float(raw)
    if isinstance(raw, str):
        s = raw.strip()
        if _missing(s):
            return math.nan
        try:
            return float(s)
        except ValueError:
            raise LogFormatError(f"{where}: column {col!r} is not a number: {raw!r}") from None
    raise LogFormatError(f"{where}: column {col!r} is not a number: {raw!r}")


def _is_number(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return v is None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return True
    if isinstance(v, str):
        if _missing(v):
            return True
        try:
            float(v)
        except ValueError:
            return False
        return True
    return False


# ------------------------------------------------------------------------------ rows
def rows_table(rows: Sequence[tuple[str, Mapping[str, Any]]], source: str, *, keep: Iterable[str] = (),
               header_at: str | None = None) -> Table:
    """A table from ``(location, {name: raw value})`` rows (JSON, JSONL, TensorBoard, memory).

    Columns named in ``keep`` must be numeric (a text cell is an error naming its row); other
    columns with a text cell anywhere are dropped (timestamps, notes).
    """
    if not rows:
        raise LogFormatError(f"{source}: the log is empty (no rows)")
    names: list[str] = []
    seen: set[str] = set()
    for _, r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                names.append(k)
    keep = set(keep)
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    dropped = []
    for name in names:
        cells = [r.get(name) for _, r in rows]
        if name not in keep and not all(_is_number(c) for c in cells):
            dropped.append(name)
            continue
        values[name] = np.array([to_float(c, where, name) for c, (where, _) in zip(cells, rows)], dtype=np.float64)
        present[name] = np.array([not (c is None or (isinstance(c, str) and _missing(c))) for c in cells])
    labels = [w for w, _ in rows]
    raw_rows = [r for _, r in rows]
    return Table(source, [n for n in names if n in values], values, present,
                 raw=lambda name, i: raw_rows[i].get(name), label=lambda i: labels[i], header_at=header_at,
                 dropped=dropped)


# ------------------------------------------------------------------------------ CSV
def _sniff_delimiter(first: str) -> str:
    return "," if "," in first else "\t" if "\t" in first else ";" if ";" in first else ","


def csv_table(data: bytes | str, source: str, *, delimiter: str | None = None,
              keep: Callable[[list[str]], set[str]], progress: Progress | None = None, fast: bool = True) -> Table:
    """Parse a CSV log (header line, then rows); ``keep(header)`` names the columns that must be numeric.

    The bytes are parsed by NumPy straight from memory (no text copy of the file); ``fast=False``
    (and any irregularity: quotes, ragged rows, a text cell in a number column, bytes that are
    not UTF-8) takes the line-by-line path, which names the line of an error."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 (Windows tools): as UTF-8 from here on
        data = decode(data, source).encode("utf-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise LogFormatError(f"{source}:1: the file is empty")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if fast and b'"' not in data:
        try:
            return _csv_fast(data, source, delimiter, keep, progress)
        except (_Fallback, UnicodeDecodeError):
            pass
    return _csv_text(decode(data, source), source, delimiter, keep)


def _header(text: str, source: str, delimiter: str | None) -> tuple[list[str], str, int, int]:
    """(header cells, delimiter, header line number, offset of the body) of CSV text."""
    start, header_line = 0, 1
    while True:
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        if line.strip() or end < 0:
            break
        start, header_line = end + 1, header_line + 1
    d = delimiter or _sniff_delimiter(line)
    header = [h.strip() for h in next(csv.reader([line], delimiter=d), [])]
    if not header or all(h == "" for h in header):
        raise LogFormatError(f"{source}:{header_line}: no header row")
    return header, d, header_line, (len(text) if end < 0 else end + 1)


def _complete_tail(body: str, header: list[str], d: str, must: set[str]) -> bool:
    """Is the last line of a body that does not end with a newline a whole row?"""
    last = body[body.rfind("\n") + 1:]
    cells = next(csv.reader([last], delimiter=d), [])
    return len(cells) == len(header) and all(_is_number(c) for h, c in zip(header, cells) if h in must)


def _csv_text(text: str, source: str, delimiter: str | None, keep: Callable[[list[str]], set[str]]) -> Table:
    header, d, header_line, body_start = _header(text, source, delimiter)
    body = text[body_start:]
    if not body.strip():
        raise LogFormatError(f"{source}:{header_line + 1}: no data rows after the header")
    must = keep(header)
    # a half-written last line of a live log (no final newline): ignore it when it is incomplete
    if not body.endswith("\n") and not _complete_tail(body, header, d, must):
        body = body[: body.rfind("\n") + 1]
        if not body.strip():
            raise LogFormatError(f"{source}:{header_line + 1}: no complete data rows after the header")
    return _csv_slow(body, header, d, source, must, f"{source}:{header_line}", header_line)


class _Fallback(Exception):
    pass


def _csv_fast(data: bytes, source: str, delimiter: str | None, keep: Callable[[list[str]], set[str]],
              progress: Progress | None) -> Table:
    """Column-wise NumPy parse of the bytes; raises _Fallback when the text path must take over."""
    head = data[: 1 << 16].decode("utf-8", errors="ignore")
    header, d, header_line, _ = _header(head if len(data) > len(head) else data.decode("utf-8"), source, delimiter)
    body_start = 0
    for _ in range(header_line):
        body_start = data.index(b"\n", body_start) + 1 if data.find(b"\n", body_start) >= 0 else len(data)
    if not data[body_start:body_start + 4096].strip() and not data[body_start:].strip():
        raise _Fallback  # no data rows: the text path words the error
    must = keep(header)
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if cut <= body_start or not _complete_tail(data[cut:].decode("utf-8"), header, d, must):
            data = data[:cut]
            if not data[body_start:].strip():
                raise _Fallback
    # which columns are numbers: judged on the first rows; a later text cell falls back
    sample_text = data[body_start:body_start + (1 << 16)].decode("utf-8", errors="ignore")
    sample = list(csv.reader(io.StringIO(sample_text), delimiter=d))
    if len(sample) > 1 and body_start + (1 << 16) < len(data):
        sample = sample[:-1]
    numeric = [j for j, h in enumerate(header)
               if h in must or all(_is_number(r[j]) for r in sample if len(r) > j)]
    if not numeric:
        raise _Fallback
    db = d.encode()
    nl = data.count(b"\n", body_start)
    rows = nl + (not data.endswith(b"\n")) - data.count(b"\n\n", body_start) - data.startswith(b"\n", body_start)
    if data.count(db, body_start) != (len(header) - 1) * rows:  # a ragged row (or a blank-looking line)
        raise _Fallback
    if progress is not None:
        progress("parsing", 0.0)
    if _has_missing_cells(data, db, body_start):  # mark empty/NA cells (rarer in long logs; a text pass)
        e = re.escape(d)
        cell = r"[ \t]*(?:na|n/a|null|none)?[ \t]*"
        text = re.sub(rf"(?mi)(?<={e}){cell}(?={e}|$)|^{cell}(?={e})", _EMPTY_TXT, data[body_start:].decode("utf-8"))
        data, body_start = text.encode("utf-8"), 0
        del text
    try:
        arr = np.loadtxt(io.BytesIO(data), delimiter=d, dtype=np.float64, usecols=numeric, comments=None,
                         ndmin=2, quotechar=None, skiprows=_lines_before(data, body_start), encoding="utf-8")
    except ValueError:
        raise _Fallback from None
    if arr.shape[0] != rows:
        raise _Fallback
    if progress is not None:
        progress("parsing", 1.0)
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    names = []
    for k, j in enumerate(numeric):
        name = header[j]
        if name in values:  # a repeated header name: keep the first
            continue
        col = arr[:, k]  # a view: the parsed block is the columns' storage (no second copy of the log)
        p = col != _EMPTY
        col[~p] = np.nan
        names.append(name)
        values[name], present[name] = col, p
    del arr
    dropped = [h for j, h in enumerate(header) if j not in numeric]
    return Table(source, names, values, present, header_at=f"{source}:{header_line}", dropped=dropped)


def _lines_before(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset)


def _has_missing_cells(data: bytes, d: bytes, start: int) -> bool:
    """Any empty cell or NA/null/none token after ``start``? (substring tests at C speed)"""
    def has(sub: bytes, buf: bytes = data) -> bool:
        return buf.find(sub, start) >= 0

    if has(d + d) or has(b"\n" + d) or has(d + b"\n") or data.startswith(d, start) or data.endswith(d):
        return True
    if has(d + b" ") or has(b" " + d) or (d != b"\t" and has(d + b"\t")):
        return True  # cells padded with blanks may be blank
    low = data.lower() if any(has(c) for c in (b"N", b"n", b"U", b"u")) else data
    return any(low.find(tok, start) >= 0 for tok in (b"na" + d, b"na\n", b"null", b"none", b"n/a")) or low.endswith(b"na")


def _csv_slow(body: str, header: list[str], d: str, source: str, must: set[str], at: str,
              header_line: int) -> Table:
    """Python's csv module, with line numbers (quoted cells, ragged rows, errors to locate)."""
    cols: list[list[str]] = [[] for _ in header]
    lines: list[int] = []
    reader = csv.reader(io.StringIO(body), delimiter=d)
    for cells in reader:
        lineno = header_line + reader.line_num
        if not cells or all(c.strip() == "" for c in cells):
            continue
        if len(cells) > len(header):
            raise LogFormatError(f"{source}:{lineno}: {len(cells)} cells but the header has {len(header)} columns")
        for j in range(len(header)):
            cols[j].append(cells[j] if j < len(cells) else "")
        lines.append(lineno)
    if not lines:
        raise LogFormatError(f"{source}:{header_line + 1}: no data rows after the header")
    line_arr = np.array(lines, dtype=np.int64)
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    raw: dict[str, list[str]] = {}
    names, dropped = [], []
    for j, name in enumerate(header):
        if name in values or name in dropped:
            continue
        cells = cols[j]
        if name not in must and not all(_is_number(c) for c in cells):
            dropped.append(name)
            continue
        values[name] = np.array([to_float(c, f"{source}:{ln}", name) for c, ln in zip(cells, lines)], dtype=np.float64)
        present[name] = np.array([not _missing(c) for c in cells], dtype=bool)
        raw[name] = cells
        names.append(name)
    return Table(source, names, values, present, raw=lambda name, i: raw[name][i], lines=line_arr, header_at=at,
                 dropped=dropped)


# ------------------------------------------------------------------------------ JSON lines
def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def jsonl_rows(text: str, source: str) -> list[tuple[str, dict[str, Any]]]:
    """One ``(location, flattened object)`` per non-blank line; a half-written last line is skipped."""
    if not text.strip():
        raise LogFormatError(f"{source}:1: the file is empty")
    lines = text.splitlines()
    partial_tail = not text.endswith(("\n", "\r"))
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if partial_tail and i == last:
                continue  # a live log's line still being written
            raise LogFormatError(f"{source}:{i + 1}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise LogFormatError(f"{source}:{i + 1}: expected a JSON object per line, got {type(obj).__name__}")
        rows.append((f"{source}:{i + 1}", flatten(obj)))
    if not rows:
        raise LogFormatError(f"{source}:1: no complete JSON lines")
    return rows


def jsonl_table(text: str, source: str, keep: Callable[[list[str]], set[str]]) -> Table:
    rows = jsonl_rows(text, source)
    names = list(dict.fromkeys(k for _, r in rows for k in r))
    return rows_table(rows, source, keep=keep(names))
