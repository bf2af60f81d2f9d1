"""Read training logs into one normalised table: ``step, loss, lr, val_loss, accuracy, ...``.

Accepted inputs (:func:`read_log`):

* a CSV file (``.csv``; also Keras ``CSVLogger`` output ``epoch,loss,...`` and Lightning
  ``CSVLogger``'s ``metrics.csv``, where train and validation metrics sit on different rows with
  blanks: rows with the same step are merged);
* a JSONL file (``.jsonl``/``.ndjson``: one JSON object per line; blank lines are skipped);
* a JSON file (``.json``): a list of objects, an object of lists, or a Hugging Face
  ``trainer_state.json`` (its ``log_history``);
* a TensorBoard event file or a directory holding event files (read with TensorBoard's
  ``EventAccumulator``, imported lazily; scalars of sub-directories named ``validation``/``val``/
  ``eval`` get a ``val_`` prefix, as the Keras TensorBoard callback writes them);
* in memory: a Keras ``History`` object (or its ``.history`` dict), a dict of lists, or a list
  of dicts.

Column names are normalised (the first match wins, case-insensitive):

============  =====================================================================
normalised    accepted names
============  =====================================================================
step          step, global_step, iteration, iter, epoch (``step`` wins over ``epoch``)
loss          loss, train_loss, train/loss, training_loss, train_loss_step, loss_step,
              epoch_loss, train_loss_epoch, loss_epoch
lr            lr, learning_rate, train/lr, train/learning_rate, lr-<Optimizer>..., epoch_learning_rate
val_loss      val_loss, validation_loss, valid_loss, val/loss, eval_loss, eval/loss, val_epoch_loss
accuracy      accuracy, acc, train_acc, train_accuracy, train/accuracy, epoch_accuracy
val_accuracy  val_accuracy, val_acc, val/accuracy, eval_accuracy, valid_acc
grad_norm     grad_norm, gradient_norm, train/grad_norm, grad_norm_total, grad_2.0_norm_total
============  =====================================================================

Other numeric columns are kept under their own names. When there is no step column, the row
number is the step (``LogRecords.step_column == "row"``). Bad input raises :class:`LogFormatError`
(a ``ValueError``) naming the file and line, e.g. ``log.csv:17: column 'loss' is not a number: 'abc'``.

Example:
    >>> recs = read_log([{"step": 0, "train_loss": 2.3, "lr": 0.1}, {"step": 1, "train_loss": 2.1, "lr": 0.1}])
    >>> recs.loss.tolist(), recs.step.tolist()
    ([2.3, 2.1], [0, 1])
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["LogFormatError", "LogRecords", "read_log", "ALIASES"]


class LogFormatError(ValueError):
    """A log that cannot be read; the message names the file and, where it applies, the line."""


ALIASES: dict[str, tuple[str, ...]] = {
    "step": ("step", "global_step", "iteration", "iter", "epoch"),
    "loss": (
        "loss",
        "train_loss",
        "train/loss",
        "training_loss",
        "train_loss_step",
        "loss_step",
        "epoch_loss",
        "train_loss_epoch",
        "loss_epoch",
    ),
    "lr": ("lr", "learning_rate", "train/lr", "train/learning_rate", "epoch_learning_rate", "epoch_lr"),
    "val_loss": ("val_loss", "validation_loss", "valid_loss", "val/loss", "eval_loss", "eval/loss", "val_epoch_loss"),
    "accuracy": ("accuracy", "acc", "train_acc", "train_accuracy", "train/accuracy", "train/acc", "epoch_accuracy"),
    "val_accuracy": ("val_accuracy", "val_acc", "val/accuracy", "val/acc", "eval_accuracy", "valid_acc", "val_epoch_accuracy"),
    "grad_norm": ("grad_norm", "gradient_norm", "train/grad_norm", "grad_norm_total", "grad_2.0_norm_total"),
}
_LR_PATTERN = re.compile(r"^lr-[A-Za-z]")  # Lightning LearningRateMonitor: lr-Adam, lr-SGD/pg1
_VAL_DIRS = ("validation", "val", "valid", "eval")


@dataclass
class LogRecords:
    """A log as columns of equal length, one row per step, sorted by step.

    Attributes:
        columns: normalised name -> float array (``nan`` where a row has no value).
        source: where it came from (a path, or a description of the object).
        step_column: the original name of the step column (``"row"`` if the row number was used).
        renamed: normalised name -> the original column name it came from.
        present: name -> bool array, ``True`` where the row has a value (so that a logged ``nan``
            loss is told apart from a row that has no loss, e.g. a validation-only row).
    """

    columns: dict[str, np.ndarray]
    source: str = "<memory>"
    step_column: str = "step"
    renamed: dict[str, str] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)

    def has(self, name: str) -> np.ndarray:
        """Bool mask of the rows where column ``name`` was logged (all ``False`` if absent)."""
        if name in self.present:
            return self.present[name]
        if name in self.columns:
            return ~np.isnan(self.columns[name])
        return np.zeros(len(self), dtype=bool)

    def __len__(self) -> int:
        return len(self.columns["step"])

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def step(self) -> np.ndarray:
        """Steps as an int64 array."""
        return self.columns["step"].astype(np.int64)

    @property
    def loss(self) -> np.ndarray:
        return self.columns["loss"]

    def get(self, name: str) -> np.ndarray | None:
        """The column ``name`` (``lr``, ``val_loss``, ``grad_norm``, ...), or ``None`` if absent."""
        return self.columns.get(name)

    @property
    def lr(self) -> np.ndarray | None:
        return self.columns.get("lr")

    @property
    def val_loss(self) -> np.ndarray | None:
        return self.columns.get("val_loss")

    @property
    def grad_norm(self) -> np.ndarray | None:
        return self.columns.get("grad_norm")

    def rows(self) -> Iterator[dict[str, float]]:
        """One dict per row, with only the values that row has (a logged ``nan`` is kept)."""
        names = list(self.columns)
        for i in range(len(self)):
            row = {}
            for n in names:
                v = float(self.columns[n][i])
                if n == "step":
                    row[n] = int(v)
                elif self.has(n)[i]:
                    row[n] = v
            yield row

    def __repr__(self) -> str:
        return f"LogRecords({len(self)} rows, columns={self.names}, source={self.source!r})"


# --------------------------------------------------------------------------------- helpers
def _normalise_names(names: Sequence[str]) -> dict[str, str]:
    """original -> normalised; the first alias (in ALIASES order) that is present wins."""
    lower = {n.strip().lower(): n for n in names}
    out: dict[str, str] = {}
    taken: set[str] = set()
    for norm, aliases in ALIASES.items():
        for a in aliases:
            if a in lower and lower[a] not in out:
                out[lower[a]] = norm
                taken.add(norm)
                break
    if "lr" not in taken:
        for n in names:
            if _LR_PATTERN.match(n.strip()) and n not in out:
                out[n] = "lr"
                break
    for n in names:  # everything else keeps its name
        if n not in out:
            key = n.strip()
            if key in taken or key in ALIASES:
                key = f"{key}_orig"
            out[n] = key
    return out


def _to_float(raw: Any, where: str, col: str) -> float:
    if raw is None:
        return math.nan
    if isinstance(raw, bool):
        raise LogFormatError(f"{where}: column {col!r} is not a number: {raw!r}")
    if isinstance(raw, (int, float, np.integer, np.floating)):
        return float(raw)
    if isinstance(raw, str):
        s = raw.strip()
        if s == "":
            return math.nan
        try:
            return float(s)
        except ValueError:
            raise LogFormatError(f"{where}: column {col!r} is not a number: {raw!r}") from None
    raise LogFormatError(f"{where}: column {col!r} is not a number: {raw!r}")


def _build(
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    source: str,
    *,
    numeric_only: set[str] | None = None,
    header_at: str | None = None,
) -> LogRecords:
    """rows: (location for messages, {original name: raw value}) -> LogRecords.

    ``header_at`` locates the column names (``file:1`` for a CSV header) in messages about them.
    """
    rows = list(rows)
    if not rows:
        raise LogFormatError(f"{source}: the log is empty (no rows)")
    names: list[str] = []
    seen: set[str] = set()
    for _, r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                names.append(k)
    mapping = _normalise_names(names)
    inv = {v: k for k, v in mapping.items()}
    if "loss" not in inv:
        raise LogFormatError(
            f"{header_at or source}: no loss column; found columns {names}; "
            f"expected one of {list(ALIASES['loss'])}"
        )
    known = set(ALIASES)
    # which unknown columns are numeric everywhere (text columns such as timestamps are dropped)
    keep = []
    for orig in names:
        norm = mapping[orig]
        if norm in known:
            keep.append(orig)
            continue
        ok = True
        for _, r in rows:
            v = r.get(orig)
            if v is None or (isinstance(v, str) and v.strip() == ""):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, str, np.integer, np.floating)):
                ok = False
                break
            if isinstance(v, str):
                try:
                    float(v)
                except ValueError:
                    ok = False
                    break
        if ok:
            keep.append(orig)
    step_orig = inv.get("step")
    merged: dict[float, dict[str, float]] = {}
    origin: dict[tuple[float, str], str] = {}
    order: list[float] = []
    for i, (where, r) in enumerate(rows):
        if step_orig is None:
            step = float(i)
        else:
            step = _to_float(r.get(step_orig), where, step_orig)
            if math.isnan(step):
                raise LogFormatError(f"{where}: column {step_orig!r} (the step) is empty")
            if not math.isfinite(step) or step != int(step):
                raise LogFormatError(f"{where}: column {step_orig!r} (the step) must be a whole number, got {r.get(step_orig)!r}")
        vals = {}
        for orig in keep:
            if orig == step_orig:
                continue
            v = _to_float(r.get(orig), where, orig)
            if not (isinstance(r.get(orig), str) and r.get(orig).strip() == "") and r.get(orig) is not None:
                vals[mapping[orig]] = v
        if not vals:
            continue
        if step not in merged:
            merged[step] = {}
            order.append(step)
        slot = merged[step]
        for k, v in vals.items():
            if k in slot and not (slot[k] == v or (math.isnan(slot[k]) and math.isnan(v))):
                raise LogFormatError(
                    f"{where}: step {int(step)} appears again with a different {k!r} value "
                    f"({v!r}; first seen at {origin[(step, k)]}: {slot[k]!r})"
                )
            slot[k] = v
            origin.setdefault((step, k), where)
    steps = sorted(merged)
    # keep only rows that carry a loss value for the loss column's rows, but keep all steps
    cols: dict[str, np.ndarray] = {"step": np.array(steps, dtype=np.float64)}
    present: dict[str, np.ndarray] = {"step": np.ones(len(steps), dtype=bool)}
    for orig in keep:
        norm = mapping[orig]
        if orig == step_orig:
            continue
        cols[norm] = np.array([merged[s].get(norm, math.nan) for s in steps], dtype=np.float64)
        present[norm] = np.array([norm in merged[s] for s in steps], dtype=bool)
    has_loss = np.array(["loss" in merged[s] for s in steps])
    if not has_loss.any():
        raise LogFormatError(f"{source}: column {inv['loss']!r} has no values")
    renamed = {mapping[o]: o for o in keep}
    return LogRecords(cols, source=source, step_column=step_orig or "row", renamed=renamed, present=present)


# --------------------------------------------------------------------------------- formats
def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file as text (UTF-8, or UTF-16 with a byte-order mark, as Windows tools write it);
    a byte that is not UTF-8 is a LogFormatError naming its line."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise LogFormatError(f"{path}:1: starts with a UTF-16 byte-order mark but is not UTF-16 text") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LogFormatError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the log as UTF-8"
        ) from None


def _read_csv(path: Path, delimiter: str | None = None) -> LogRecords:
    text = _read_text(path, "utf-8-sig")
    if not text.strip():
        raise LogFormatError(f"{path}:1: the file is empty")
    lines = text.splitlines()
    if delimiter is None:  # comma, unless the header has tabs (or semicolons) and no comma
        first = next((ln for ln in lines if ln.strip()), "")
        delimiter = "," if "," in first else "\t" if "\t" in first else ";" if ";" in first else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = next(reader)
    header = [h.strip() for h in header]
    if len(header) < 1 or all(h == "" for h in header):
        raise LogFormatError(f"{path}:1: no header row")
    rows = []
    for lineno, cells in enumerate(reader, start=2):
        if not cells or all(c.strip() == "" for c in cells):
            continue
        if len(cells) > len(header):
            raise LogFormatError(f"{path}:{lineno}: {len(cells)} cells but the header has {len(header)} columns")
        rows.append((f"{path}:{lineno}", dict(zip(header, cells))))
    if not rows:
        raise LogFormatError(f"{path}:2: no data rows after the header")
    return _build(rows, str(path), header_at=f"{path}:1")


def _read_jsonl(path: Path) -> LogRecords:
    rows = []
    text = _read_text(path)
    if not text.strip():
        raise LogFormatError(f"{path}:1: the file is empty")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogFormatError(f"{path}:{lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise LogFormatError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
        rows.append((f"{path}:{lineno}", _flatten(obj)))
    return _build(rows, str(path))


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _read_json(path: Path) -> LogRecords:
    text = _read_text(path)
    if not text.strip():
        raise LogFormatError(f"{path}:1: the file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{") and "\n" in text.strip():
            return _read_jsonl(path)  # several objects, one per line
        raise LogFormatError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(obj, dict) and isinstance(obj.get("log_history"), list):  # HF trainer_state.json
        obj = obj["log_history"]
    return _from_object(obj, str(path))


def _from_object(obj: Any, source: str) -> LogRecords:
    if isinstance(obj, Mapping):
        obj = dict(obj)
        lengths = {k: len(v) for k, v in obj.items() if isinstance(v, (list, tuple, np.ndarray))}
        if not lengths or len(lengths) != len(obj):
            bad = [k for k in obj if k not in lengths]
            raise LogFormatError(f"{source}: a dict log must map column names to lists; not lists: {bad}")
        if len(set(lengths.values())) != 1:
            raise LogFormatError(f"{source}: columns have different lengths: {lengths}")
        n = next(iter(lengths.values()))
        rows = [(f"{source}[{i}]", {k: _scalar(v[i]) for k, v in obj.items()}) for i in range(n)]
        return _build(rows, source)
    if isinstance(obj, (list, tuple)):
        rows = []
        for i, r in enumerate(obj):
            if not isinstance(r, Mapping):
                raise LogFormatError(f"{source}[{i}]: expected a dict per row, got {type(r).__name__}")
            rows.append((f"{source}[{i}]", _flatten(r)))
        return _build(rows, source)
    raise LogFormatError(f"{source}: cannot read a log from {type(obj).__name__}")


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:  # 0-d tensors
        return v.item()
    return v


def _event_dirs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    dirs = sorted({p.parent for p in path.rglob("*tfevents*") if p.is_file()})
    return dirs


def _read_tensorboard(path: Path) -> LogRecords:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LogFormatError(f"{path}: reading TensorBoard logs needs the tensorboard package (pip install tensorboard)") from exc
    targets = _event_dirs(path)
    if not targets:
        raise LogFormatError(f"{path}: no TensorBoard event files (*tfevents*) found")
    rows_by_step: dict[int, dict[str, float]] = {}
    for t in targets:
        acc = EventAccumulator(str(t), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception as exc:  # corrupted event files raise various errors
            raise LogFormatError(f"{t}: not a readable TensorBoard event file ({exc})") from None
        rel = t.relative_to(path) if path.is_dir() and t != path else Path(".")
        is_val = any(part.lower() in _VAL_DIRS for part in rel.parts)
        for tag in acc.Tags().get("scalars", []):
            name = tag
            if is_val:
                name = "val_" + (tag[len("epoch_") :] if tag.startswith("epoch_") else tag)
            for ev in acc.Scalars(tag):
                rows_by_step.setdefault(int(ev.step), {})[name] = float(ev.value)
    if not rows_by_step:
        raise LogFormatError(f"{path}: the TensorBoard log has no scalars")
    rows = [(f"{path}@step{s}", {"step": s, **vals}) for s, vals in sorted(rows_by_step.items())]
    return _build(rows, str(path))


def read_log(path_or_obj: Any) -> LogRecords:
    """Read a training log from a file, a directory or an in-memory object.

    Args:
        path_or_obj: a path (``str``/``Path``) to a CSV, JSONL, JSON or TensorBoard event file
            or a directory of event files; a Keras ``History``; a dict of lists; a list of dicts;
            or a :class:`LogRecords` (returned as is).

    Returns:
        :class:`LogRecords` with normalised column names, one row per step, sorted by step.

    Raises:
        LogFormatError: (a ``ValueError``) empty input, malformed JSON line, no loss column,
            a non-numeric cell in a used column, an unknown format — naming the file and line.
        FileNotFoundError: the path does not exist.

    Example:
        >>> read_log({"epoch": [0, 1, 2], "loss": [1.0, 0.5, 0.25], "val_loss": [1.1, 0.6, 0.4]}).names
        ['step', 'loss', 'val_loss']
    """
    if isinstance(path_or_obj, LogRecords):
        return path_or_obj
    if isinstance(path_or_obj, (str, Path)):
        path = Path(path_or_obj)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        if path.is_dir():
            return _read_tensorboard(path)
        name = path.name.lower()
        if "tfevents" in name:
            return _read_tensorboard(path)
        if name.endswith(".tsv"):
            return _read_csv(path, delimiter="\t")
        if name.endswith(".csv"):
            return _read_csv(path)
        if name.endswith((".jsonl", ".ndjson")):
            return _read_jsonl(path)
        if name.endswith(".json"):
            return _read_json(path)
        # unknown suffix: sniff the first non-blank character / line
        with path.open("rb") as fh:
            head = fh.read(4096)
        if not head.strip():
            raise LogFormatError(f"{path}:1: the file is empty")
        try:
            start = head.decode("utf-8").lstrip()
        except UnicodeDecodeError:
            raise LogFormatError(
                f"{path}: unknown log format (binary; not a TensorBoard event file by name); "
                "expected .csv, .jsonl, .json or a *tfevents* file"
            ) from None
        if start.startswith("{"):
            return _read_jsonl(path)
        if start.startswith("["):
            return _read_json(path)
        first = start.splitlines()[0] if start else ""
        if "," in first or "\t" in first:
            return _read_csv(path)
        raise LogFormatError(f"{path}: unknown log format; expected CSV (.csv), JSON lines (.jsonl), JSON or TensorBoard events")
    hist = getattr(path_or_obj, "history", None)
    if isinstance(hist, Mapping):  # keras.callbacks.History
        epochs = getattr(path_or_obj, "epoch", None)
        data = {k: list(v) for k, v in hist.items()}
        if epochs is not None and len(epochs) and all(len(v) == len(epochs) for v in data.values()) and "epoch" not in data:
            data = {"epoch": list(epochs), **data}
        return _from_object(data, "<keras History>")
    if isinstance(path_or_obj, (Mapping, list, tuple)):
        return _from_object(path_or_obj, "<memory>")
    raise LogFormatError(
        f"read_log: cannot read a log from {type(path_or_obj).__name__}; pass a path, a Keras History, "
        "a dict of lists or a list of dicts"
    )
