r"""A training log as one normalised table (:class:`LogRecords`), from the formats ``read_log`` accepts.

Column names are normalised (the first match wins, case-insensitive), unless named with the
``loss=``, ``lr=`` and ``val_loss=`` keywords (``--loss``, ``--lr``, ``--val-loss`` in
``lrkit diagnose``):

============  =====================================================================
normalised    accepted names
============  =====================================================================
step          step, global_step, iteration, iter, epoch (``step`` wins over ``epoch``)
loss          loss, train_loss, train/loss, Loss/train, training_loss, training loss,
              train_loss_step, loss_step, epoch_loss, train_loss_epoch, loss_epoch, ...
lr            lr, learning_rate, train/lr, train/learning_rate, lr-<Optimizer>..., epoch_learning_rate
val_loss      val_loss, validation_loss, valid_loss, val/loss, Loss/val, Loss/test, eval_loss,
              eval/loss, test_loss, val_epoch_loss, ...
accuracy      accuracy, acc, train_acc, train_accuracy, train/accuracy, Accuracy/train, epoch_accuracy
val_accuracy  val_accuracy, val_acc, val/accuracy, Accuracy/val, Accuracy/test, eval_accuracy, ...
grad_norm     grad_norm, gradient_norm, train/grad_norm, grad_norm_total, grad_2.0_norm_total
============  =====================================================================

Other numeric columns are kept under their own names. When there is no step column, the row
number is the step (``LogRecords.step_column == "row"``). Bad input raises :class:`LogFormatError`
(a ``ValueError``) naming the file and line, e.g. ``log.csv:17: column 'loss' is not a number: 'abc'``;
a log without a recognisable loss lists the columns it found and how to name one.

Large CSV files are parsed column-wise with NumPy (see :mod:`lrkit.doctor._tables`), and the
last line of a log that is still being written (no final newline, incomplete) is ignored.
"""
from __future__ import annotations

import importlib.util
import json
import re
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from lrkit.doctor._tables import (
    LogFormatError,
    NeedLines,
    Progress,
    Table,
    csv_table,
    decode,
    flatten,
    jsonl_table,
    rows_table,
)
from lrkit.doctor.console_logs import console_rows, looks_like_console
from lrkit.doctor.model_config import chance_loss_near
from lrkit.doctor.resumes import as_resumed
from lrkit.doctor.wandb_runs import read_wandb

__all__ = ["ALIASES", "LogFormatError", "LogRecords"]

ALIASES: dict[str, tuple[str, ...]] = {
    "step": ("step", "global_step", "iteration", "iter", "epoch"),
    "loss": (
        "loss",
        "train_loss",
        "train/loss",
        "loss/train",
        "training_loss",
        "training loss",
        "train loss",
        "loss/training",
        "train_loss_step",
        "loss_step",
        "train/loss_step",
        "epoch_loss",
        "train_loss_epoch",
        "loss_epoch",
        "train/loss_epoch",
    ),
    "lr": ("lr", "learning_rate", "train/lr", "train/learning_rate", "learning rate", "lr/train",
           "epoch_learning_rate", "epoch_lr"),
    "val_loss": ("val_loss", "validation_loss", "valid_loss", "val/loss", "loss/val", "loss/valid",
                 "loss/validation", "validation/loss", "eval_loss", "eval/loss", "loss/test", "test_loss",
                 "test/loss", "validation loss", "val loss", "test loss", "val_epoch_loss", "val_loss_epoch"),
    "accuracy": ("accuracy", "acc", "train_acc", "train_accuracy", "train/accuracy", "train/acc",
                 "accuracy/train", "epoch_accuracy", "train_acc_step", "train_acc_epoch"),
    "val_accuracy": ("val_accuracy", "val_acc", "val/accuracy", "val/acc", "accuracy/val", "accuracy/validation",
                     "accuracy/test", "eval_accuracy", "eval/accuracy", "valid_acc", "test_acc", "test_accuracy",
                     "val_epoch_accuracy", "val_acc_epoch"),
    "grad_norm": ("grad_norm", "gradient_norm", "train/grad_norm", "grad_norm/total", "grad_norm_total",
                  "grad_2.0_norm_total"),
}
_LR_PATTERN = re.compile(r"^lr-[A-Za-z]")  # Lightning LearningRateMonitor: lr-Adam, lr-SGD/pg1
_VAL_DIRS = ("validation", "val", "valid", "eval")
_PART_DIRS = ("train", "training") + _VAL_DIRS + ("test",)  # sub-directories that belong to one run
_NAMEABLE = ("loss", "lr", "val_loss")  # the columns a caller may name


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
        chance_loss: the model's chance-level loss, when the files beside the log say it (a Hugging
            Face ``config.json``: :mod:`lrkit.doctor.model_config`), else ``None``.
    """

    columns: dict[str, np.ndarray]
    source: str = "<memory>"
    step_column: str = "step"
    renamed: dict[str, str] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)
    chance_loss: float | None = None

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

    @property
    def epoch_level(self) -> bool:
        """``True`` when a row is an epoch (the step column is ``epoch``, as Keras' CSVLogger writes)."""
        return self.step_column.strip().lower() in ("epoch", "epochs")

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


# --------------------------------------------------------------------------------- names
def _check_named(named: Mapping[str, str | None]) -> dict[str, str]:
    out = {}
    for key, value in named.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"read_log: {key} must be a column or tag name (a non-empty str), got {value!r}")
        out[key] = value
    return out


def _lookup(names: Sequence[str], wanted: str) -> str | None:
    """The column ``wanted`` in ``names``: exact, then ignoring case and surrounding spaces."""
    if wanted in names:
        return wanted
    low = wanted.strip().lower()
    return next((n for n in names if n.strip().lower() == low), None)


def _normalise_names(names: Sequence[str], named: Mapping[str, str] | None = None) -> dict[str, str]:
    """original -> normalised; names chosen by the caller first, then the first alias present."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for norm, wanted in (named or {}).items():
        orig = _lookup(names, wanted)
        if orig is not None:
            out[orig] = norm
            taken.add(norm)
    lower: dict[str, str] = {}
    for n in names:
        lower.setdefault(n.strip().lower(), n)
    for norm, aliases in ALIASES.items():
        if norm in taken:
            continue
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


def _must_be_numeric(named: Mapping[str, str]):
    """For a header: the columns that must hold numbers (the recognised and named ones)."""

    def keep(header: list[str]) -> set[str]:
        mapping = _normalise_names(header, named)
        return {orig for orig, norm in mapping.items() if norm in ALIASES}

    return keep


def _no_loss(where: str, names: Sequence[str], named: Mapping[str, str]) -> LogFormatError:
    shown = [n for n in names]
    if "loss" in named:
        return LogFormatError(
            f"{where}: no column or tag named {named['loss']!r} (the loss you named); found {shown}"
        )
    return LogFormatError(
        f"{where}: no loss column; found columns {shown}; expected one of {list(ALIASES['loss'])}, "
        "or name it: read_log(..., loss=NAME) / lrkit diagnose --loss NAME"
    )


# --------------------------------------------------------------------------------- table -> records
def _records(table: Table, named: Mapping[str, str], header_at: str | None = None,
             empty_loss_ok: bool = False) -> LogRecords:
    """Normalise names, merge rows of the same step (vectorised) and sort by step (``empty_loss_ok``:
    a log with no training loss yet, read with an empty loss column instead of refused)."""
    if empty_loss_ok:
        table = _with_empty_loss(table)
    source = table.source
    all_names = table.names + table.dropped
    for key in ("lr", "val_loss"):
        if key in named and _lookup(all_names, named[key]) is None:
            raise LogFormatError(f"{table.header_at or source}: no column or tag named {named[key]!r} "
                                 f"(the {key} you named); found {all_names}")
    mapping = _normalise_names(table.names, named)
    inv = {v: k for k, v in mapping.items()}
    if "loss" not in inv:
        raise _no_loss(header_at or table.header_at or source, all_names, named)
    step_orig = inv.get("step")
    n = table.n
    if step_orig is None:
        steps = np.arange(n, dtype=np.float64)
    else:
        steps = table.values[step_orig]
        missing = ~table.present[step_orig]
        if missing.any():
            i = int(np.argmax(missing))
            raise LogFormatError(f"{table.where(i)}: column {step_orig!r} (the step) is empty")
        bad = ~np.isfinite(steps) | (steps != np.round(steps))
        if bad.any():
            i = int(np.argmax(bad))
            raise LogFormatError(f"{table.where(i)}: column {step_orig!r} (the step) must be a whole number, "
                                 f"got {table.cell(step_orig, i)!r}")
    cols = [c for c in table.names if c != step_orig]
    any_value = np.zeros(n, dtype=bool)
    for c in cols:
        any_value |= table.present[c]
    if any_value.all() and (n < 2 or bool(np.all(steps[1:] > steps[:-1]))):  # one row per step, in order
        return _unmerged(table, mapping, inv, steps, step_orig, empty_loss_ok)
    try:
        columns, present = _merged(table, mapping, cols, steps, any_value)
    except _Conflict as conflict:
        # a step logged again with another value after the steps went back: a run resumed from an
        # earlier checkpoint appended to its log (rows merged by step that never disagree -- training
        # rows, then validation rows at earlier steps -- are no resume)
        kept = _resumed_rows(table, steps, step_orig) if step_orig is not None else None
        if kept is None:
            raise conflict.error() from None
        try:
            columns, present = _merged(table, mapping, cols, steps, any_value & kept)
        except _Conflict as again:
            raise again.error() from None
    if not present["loss"].any() and not empty_loss_ok:
        raise LogFormatError(f"{source}: column {inv['loss']!r} has no values")
    renamed = {mapping[o]: o for o in table.names}
    return LogRecords(columns, source=source, step_column=step_orig or "row", renamed=renamed, present=present)


class _Conflict(Exception):
    """A step whose rows disagree on a value; ``error()`` makes the user's error (naming lines, which
    a fast parse may have to re-read the file for: only when it is raised)."""

    def __init__(self, error: Callable[[], LogFormatError]) -> None:
        super().__init__("rows of a step disagree")
        self.error = error


def _merged(table: Table, mapping: dict[str, str], cols: list[str], steps: np.ndarray,
            any_value: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The columns and presence masks of the rows ``any_value`` holds, merged by step.

    Raises:
        _Conflict: two rows of a step hold different values of a column.
    """
    rows = np.nonzero(any_value)[0]
    order = rows[np.argsort(steps[rows], kind="stable")]
    uniq, inverse = np.unique(steps[order], return_inverse=True)
    m = len(uniq)
    columns: dict[str, np.ndarray] = {"step": uniq.astype(np.float64)}
    present: dict[str, np.ndarray] = {"step": np.ones(m, dtype=bool)}
    for c in cols:
        v, p = table.values[c][order], table.present[c][order]
        idx = np.nonzero(p)[0]
        g = inverse[idx]
        out = np.full(m, np.nan)
        got = np.zeros(m, dtype=bool)
        if idx.size:
            ug, first = np.unique(g, return_index=True)
            out[ug] = v[idx[first]]
            got[ug] = True
            same = (v[idx] == out[g]) | (np.isnan(v[idx]) & np.isnan(out[g]))
            if not same.all():
                k = int(np.argmax(~same))
                row, first_row = int(order[idx[k]]), int(order[idx[first[np.searchsorted(ug, g[k])]]])
                norm, step, value, first = mapping[c], int(uniq[g[k]]), float(v[idx[k]]), float(out[g[k]])
                raise _Conflict(lambda: LogFormatError(
                    f"{table.where(row)}: step {step} appears again with a different {norm!r} value "
                    f"({value!r}; first seen at {table.where(first_row)}: {first!r})"))
        columns[mapping[c]] = out
        present[mapping[c]] = got
    return columns, present


def _resumed_rows(table: Table, steps: np.ndarray, step_col: str) -> np.ndarray | None:
    """The rows of a log appended by a run resumed from an earlier checkpoint, as it went on: where
    the step goes back (in file order) to a step ``s``, the rows before with step ``>= s`` are
    dropped (:mod:`lrkit.doctor.resumes`). ``None`` when the steps never go back. Steps that go
    back to the log's first step are no resume but a second run written into the same file: an
    error that says so."""
    back = np.nonzero(steps[1:] < steps[:-1])[0] + 1
    if back.size == 0:
        return None
    restart = back[steps[back] <= steps[0]]
    if restart.size:
        i = int(restart[0])
        raise LogFormatError(
            f"{table.where(i)}: column {step_col!r} (the step) starts again at {table.cell(step_col, i)} after "
            f"{steps[i - 1]:g}: two runs written into one file? (a run resumed from a checkpoint starts again "
            "from a later step.) Write each run to a file of its own, or keep the one to read")
    keep = np.zeros(len(steps), dtype=bool)  # the file's order is its time order
    keep[[row for _, _, row in as_resumed((row, float(step), row) for row, step in enumerate(steps))]] = True
    return keep


def _unmerged(table: Table, mapping: dict[str, str], inv: dict[str, str], steps: np.ndarray,
              step_orig: str | None, empty_loss_ok: bool = False) -> LogRecords:
    """The common case of a long log (steps strictly increasing, no empty row): no merge, no copy."""
    columns: dict[str, np.ndarray] = {"step": np.asarray(steps, dtype=np.float64)}
    present: dict[str, np.ndarray] = {"step": np.ones(len(steps), dtype=bool)}
    for c in table.names:
        if c == step_orig:
            continue
        columns[mapping[c]] = table.values[c]
        present[mapping[c]] = table.present[c]
    if not present["loss"].any() and not empty_loss_ok:
        raise LogFormatError(f"{table.source}: column {inv['loss']!r} has no values")
    renamed = {mapping[o]: o for o in table.names}
    return LogRecords(columns, source=table.source, step_column=step_orig or "row", renamed=renamed, present=present)


# --------------------------------------------------------------------------------- formats
def _read_bytes(path: Path, progress: Progress | None = None) -> bytes:
    """The whole file, read in chunks (so that a progress bar can follow a large one)."""
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    if progress is None or size < (8 << 20):
        with path.open("rb") as fh:
            return fh.read()
    chunks, done = [], 0
    with path.open("rb") as fh:
        while True:
            b = fh.read(4 << 20)
            if not b:
                break
            chunks.append(b)
            done += len(b)
            progress("reading", min(1.0, done / size))
    return b"".join(chunks)


def _csv(data: bytes, source: str, named: Mapping[str, str], delimiter: str | None = None,
         progress: Progress | None = None) -> LogRecords:
    keep = _must_be_numeric(named)
    try:
        return _records(csv_table(data, source, delimiter=delimiter, keep=keep, progress=progress), named)
    except NeedLines:  # an error in a fast-parsed file: parse again with line numbers to name it
        return _records(csv_table(data, source, delimiter=delimiter, keep=keep, fast=False), named)


def _json(data: bytes, source: str, named: Mapping[str, str]) -> LogRecords:
    text = decode(data, source)
    if not text.strip():
        raise LogFormatError(f"{source}:1: the file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{") and "\n" in text.strip():
            return _records(jsonl_table(text, source, _must_be_numeric(named)), named)  # one object per line
        raise LogFormatError(f"{source}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(obj, dict) and isinstance(obj.get("log_history"), list):  # HF trainer_state.json
        obj = obj["log_history"]
        return _from_object(obj, source, named, empty_loss_ok=_no_training_loss_yet(obj, named))
    return _from_object(obj, source, named)


def _no_training_loss_yet(rows: Sequence[Any], named: Mapping[str, str]) -> bool:
    """A Hugging Face Trainer's log (its ``eval_loss``) that holds no training loss yet: the Trainer
    logs one every ``logging_steps=500`` by default and evaluates once per epoch. Its validation
    losses still say something (:mod:`lrkit.doctor.val_only`), so it is read with an empty loss
    column instead of refused (other logs without a loss are refused: their loss has another name)."""
    losses = set(ALIASES["loss"])
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        return False  # not a log of dict rows: the reader says what is wrong with it
    return ("loss" not in named and any(not _TRAINER_EVAL_LOSS.isdisjoint(r) for r in rows)
            and all(losses.isdisjoint(r) for r in rows))


def _with_empty_loss(table: Table) -> Table:
    """``table`` with a ``loss`` column that holds no value (a log with no training loss yet)."""
    n = table.n
    return replace(table, names=[*table.names, "loss"], values={**table.values, "loss": np.full(n, np.nan)},
                   present={**table.present, "loss": np.zeros(n, dtype=bool)})


#: the names a Trainer gives its evaluation loss: trainer_state.json and MLflow, TensorBoard
_TRAINER_EVAL_LOSS = frozenset({"eval_loss", "eval/loss"})


def _from_object(obj: Any, source: str, named: Mapping[str, str], empty_loss_ok: bool = False) -> LogRecords:
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
    elif isinstance(obj, (list, tuple)):
        rows = []
        for i, r in enumerate(obj):
            if not isinstance(r, Mapping):
                raise LogFormatError(f"{source}[{i}]: expected a dict per row, got {type(r).__name__}")
            rows.append((f"{source}[{i}]", flatten(r)))
    else:
        raise LogFormatError(f"{source}: cannot read a log from {type(obj).__name__}")
    names = list(dict.fromkeys(k for _, r in rows for k in r))
    return _records(rows_table(rows, source, keep=_must_be_numeric(named)(names)), named, empty_loss_ok=empty_loss_ok)


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:  # 0-d tensors
        return v.item()
    return v


def _tensorboard(path: Path, named: Mapping[str, str]) -> LogRecords:
    if importlib.util.find_spec("tensorboard") is None:  # pragma: no cover - depends on the environment
        raise LogFormatError(f"{path}: reading TensorBoard logs needs the tensorboard package (pip install tensorboard)")
    from lrkit.doctor.tensorboard_events import scalar_rows

    targets = [path] if path.is_file() else sorted({p.parent for p in path.rglob("*tfevents*") if p.is_file()})
    if not targets:
        raise LogFormatError(f"{path}: no TensorBoard event files (*tfevents*) found")
    rows_by_step = scalar_rows(targets, path, _VAL_DIRS)
    if not rows_by_step:
        raise LogFormatError(f"{path}: the TensorBoard log has no scalars")
    rows = [(f"{path}@step{s}", {"step": s, **vals}) for s, vals in sorted(rows_by_step.items())]
    names = list(dict.fromkeys(k for _, r in rows for k in r))
    table = rows_table(rows, str(path), keep=_must_be_numeric(named)(names))
    try:  # a Trainer's report_to="tensorboard" may hold no training loss yet
        return _records(table, named, empty_loss_ok=_no_training_loss_yet([r for _, r in rows], named))
    except LogFormatError as exc:
        if "no loss column" in str(exc):
            tags = [n for n in names if n != "step"]
            raise LogFormatError(
                f"{path}: no loss tag; found tags {tags}; expected one of {list(ALIASES['loss'])}, or name it: "
                "read_log(..., loss=TAG) / lrkit diagnose --loss TAG"
            ) from None
        raise


def _sniff(data: bytes, source: str, named: Mapping[str, str], progress: Progress | None) -> LogRecords:
    """A file whose name says nothing (or a pipe): look at its first non-blank character."""
    head = data[:4096]
    if not head.strip():
        raise LogFormatError(f"{source}:1: the file is empty")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = decode(data, source)
        start = text.lstrip()
    else:
        try:
            start = head.decode("utf-8", errors="strict").lstrip()
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:
                raise LogFormatError(
                    f"{source}: unknown log format (binary; not a TensorBoard event file by name); "
                    "expected .csv, .jsonl, .json or a *tfevents* file"
                ) from None
            start = head[: exc.start].decode("utf-8").lstrip()
    if start.startswith("{") and not start.startswith("{'"):  # ({'loss': ...}: a Trainer's console output)
        return _records(jsonl_table(decode(data, source), source, _must_be_numeric(named)), named)
    if start.startswith("["):
        return _json(data, source, named)
    first = start.splitlines()[0] if start else ""
    console = console_rows(decode(data, source), source) if looks_like_console(data[:65536]) else None
    if console is not None:
        names = list(dict.fromkeys(k for _, r in console for k in r))
        return _records(rows_table(console, source, keep=_must_be_numeric(named)(names)), named)
    if "," in first or "\t" in first or ";" in first:
        return _csv(data, source, named, progress=progress)
    raise LogFormatError(f"{source}: unknown log format; expected CSV (.csv), JSON lines (.jsonl), JSON, TensorBoard "
                         "events, or the console output of a Hugging Face Trainer or Keras fit")


def _read_file(path: Path, named: Mapping[str, str], progress: Progress | None) -> LogRecords:
    source = "<stdin>" if str(path) == "-" else str(path)
    name = path.name.lower()
    if str(path) != "-" and "tfevents" in name and path.is_file():
        return _tensorboard(path, named)
    if str(path) != "-" and name.endswith(".wandb") and path.is_file():
        return _wandb(path, named)
    data = _read_bytes(path, progress)  # read once: a pipe cannot be read twice
    if str(path) == "-" or not stat.S_ISREG(path.stat().st_mode):
        return _sniff(data, source, named, progress)
    if name.endswith(".tsv"):
        return _csv(data, source, named, delimiter="\t", progress=progress)
    if name.endswith(".csv"):
        return _csv(data, source, named, progress=progress)
    if name.endswith((".jsonl", ".ndjson")):
        return _records(jsonl_table(decode(data, source), source, _must_be_numeric(named)), named)
    if name.endswith(".json"):
        records = _json(data, source, named)
        if name == "trainer_state.json":
            records.chance_loss = chance_loss_near(path)
        return records
    return _sniff(data, source, named, progress)

def _wandb(path: Path, named: Mapping[str, str]) -> LogRecords:
    run = read_wandb(path)
    names = list(dict.fromkeys(k for _, r in run.rows for k in r))
    empty = _no_training_loss_yet([r for _, r in run.rows], named)  # a Trainer's report_to="wandb", no loss yet
    records = _records(rows_table(run.rows, str(path), keep=_must_be_numeric(named)(names)), named, empty_loss_ok=empty)
    records.chance_loss = run.chance_loss
    return records
