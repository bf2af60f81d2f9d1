r"""Training logs as a console printed them: the log a run keeps when nothing else was set up
(a SLURM ``.out`` file, ``python train.py > train.log``, a notebook's output saved as text).

Three shapes are read:

* the Hugging Face ``Trainer``'s printed dicts, ``{'loss': '2.267', 'grad_norm': '0.45',
  'learning_rate': '0.0004', 'epoch': '0.53'}`` (values printed as strings by transformers 5,
  as numbers before), anywhere on a line (tqdm's bars share it); the dicts printed at the same
  ``epoch`` (a training log, the evaluation after it, the final summary) are one row. They carry
  no step: rows are numbered (``LogRecords.step_column == "row"``), one per logging point;
* Keras ``fit``'s epoch lines, ``Epoch 3/12`` then ``47/47 - 0s - 3ms/step - accuracy: 0.79 -
  loss: 1.18 - val_loss: 1.12`` (``verbose=2``), or its progress bar (``verbose=1``: the epoch's
  last update, after its carriage returns, is the epoch's row); the step is the epoch (from 0);
* lines a training script printed itself, with a loss in them: ``iter 100: loss 2.3456, time
  12.3ms`` and ``step 250: train loss 2.01, val loss 2.09`` (nanoGPT), ``Epoch [1/5], Step
  [100/600], Loss: 0.4567`` (the PyTorch tutorials), ``epoch 3 | loss 0.45 | val_loss 0.50 | lr
  1e-3``: a value follows its name (``loss``, ``lr``, ``learning rate``, ``acc``/``accuracy``,
  ``grad norm``, ``perplexity``/``ppl``, each with an optional ``train``/``val``/``valid``/
  ``validation``/``eval``/``test`` in front), after a space, ``:`` or ``=``. The step is the
  printed ``step``/``iter``/``iteration``/``it``/``batch`` counter (plus ``epoch x total`` when a
  per-epoch counter says its total, ``Step [100/600]``), else the epoch; lines of one step are one
  row; when the counters do not increase through the file, rows are numbered instead. Two such
  lines at least (one line with a loss in it is more likely prose).

Terminal colour codes and backspaces are dropped first.

Example:
    >>> rows = console_rows("Epoch 1/2\n5/5 - 0s - loss: 2.1 - val_loss: 2.0\nEpoch 2/2\n5/5 - 0s - loss: 1.5 - val_loss: 1.6\n", "t.out")
    >>> [r for _, r in rows]
    [{'epoch': 0, 'loss': 2.1, 'val_loss': 2.0}, {'epoch': 1, 'loss': 1.5, 'val_loss': 1.6}]
"""
from __future__ import annotations

import ast
import re
from typing import Any

__all__ = ["console_rows", "looks_like_console"]

_TERMINAL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x08")
_DICT = re.compile(r"\{'[^{}]*\}")
_EPOCH = re.compile(r"^\s*Epoch (\d+)/(\d+)\s*$")
_PAIR = re.compile(r"(?:^|\s)-\s([A-Za-z_][\w./]*): (-?(?:nan|inf|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))(?=\s|$)")

Row = tuple[str, dict[str, Any]]


_HINT = re.compile(rb"\{'|^\s*Epoch \d+/\d+\s*$|(?i:\bloss\b[ \t]*[:=]?[ \t]*-?(?:\d|\.\d|nan|inf))", re.MULTILINE)
_NUM = r"(-?(?:nan|inf|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))"
_COUNTER = re.compile(r"\b(step|iter|iteration|it|batch|epoch)\b\s*[:=#]?\s*\[?\s*(\d+)\s*(?:/\s*(\d+))?\s*\]?",
                      re.IGNORECASE)
_METRIC = re.compile(r"\b(?:(train|training|val|valid|validation|eval|test)[ _/-]?)?"
                     r"(loss|lr|learning[ _]rate|acc|accuracy|grad[ _]norm|perplexity|ppl)\b\s*[:=]?\s*" + _NUM
                     + r"(?![\w.])", re.IGNORECASE)
_PREFIX = {"training": "train", "valid": "val", "validation": "val"}


def looks_like_console(head: bytes) -> bool:
    """Whether the start of a file holds a Trainer dict, a Keras epoch line or a printed ``loss <number>``
    (a cheap look on one line at a time, so that a large CSV is not searched line by line)."""
    return bool(_HINT.search(head))


def console_rows(text: str, source: str) -> list[Row] | None:
    """The rows of a console log (see the module docstring), or ``None`` when ``text`` is none of its shapes."""
    text = _TERMINAL.sub("", text)
    return _trainer_rows(text, source) or _keras_rows(text, source) or _printed_rows(text, source)


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _trainer_rows(text: str, source: str) -> list[Row] | None:
    rows: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for n, line in enumerate(text.split("\n"), 1):
        for m in _DICT.finditer(line):
            try:
                d = ast.literal_eval(m.group(0))
            except (ValueError, SyntaxError):
                continue
            if not isinstance(d, dict) or "epoch" not in d:
                continue
            values = {str(k): _number(v) for k, v in d.items()}
            key = str(d["epoch"])
            row = rows.setdefault(key, {})
            where.setdefault(key, f"{source}:{n}")
            row.update({k: v for k, v in values.items() if k != "epoch" and v is not None})
    keep = [(where[k], r) for k, r in rows.items() if r]
    return keep if any("loss" in r or "train_loss" in r or "eval_loss" in r for _, r in keep) else None


def _keras_rows(text: str, source: str) -> list[Row] | None:
    rows: dict[int, Row] = {}
    epoch = None
    for n, line in enumerate(text.split("\n"), 1):
        m = _EPOCH.match(line)
        if m:
            epoch = int(m.group(1)) - 1
            continue
        if epoch is None:
            continue
        last = [s for s in line.split("\r") if s.strip()]
        pairs = _PAIR.findall(last[-1]) if last else []
        if pairs and any(k == "loss" for k, _ in pairs):
            values = {k: float(v) for k, v in pairs}  # float() reads "nan" and "inf" too
            rows[epoch] = (f"{source}:{n}", {"epoch": epoch, **values})
    return [rows[e] for e in sorted(rows)] or None


def _printed_rows(text: str, source: str) -> list[Row] | None:
    """Lines a script printed (see the module docstring): ``(where, {"step"|"epoch": n, name: value})``."""
    rows: list[tuple[str, int | None, str | None, dict[str, float]]] = []
    for n, line in enumerate(text.split("\n"), 1):
        metrics = {}
        for prefix, name, value in _METRIC.findall(line.split("\r")[-1]):
            key = name.lower().replace(" ", "_")
            if prefix:
                key = f"{_PREFIX.get(prefix.lower(), prefix.lower())}_{key}"
            metrics.setdefault(key, float(value))
        if not any(k.endswith("loss") for k in metrics):
            continue
        counters = {k.lower(): (int(v), int(t) if t else None) for k, v, t in _COUNTER.findall(line)}
        step, kind = _step_of(counters)
        rows.append((f"{source}:{n}", step, kind, metrics))
    if len(rows) < 2:  # one line with "loss 3" in it is prose more likely than a log
        return None
    kinds = {kind for _, _, kind, _ in rows}
    steps = [step for _, step, _, _ in rows]
    if len(kinds) == 1 and None not in kinds and all(a <= b for a, b in zip(steps, steps[1:])):
        kind = kinds.pop()
        merged: dict[int, Row] = {}
        for where, step, _, metrics in rows:
            merged.setdefault(step, (where, {kind: step}))[1].update(metrics)
        return list(merged.values())
    return [(where, metrics) for where, _, _, metrics in rows]  # numbered


def _step_of(counters: dict[str, tuple[int, int | None]]) -> tuple[int | None, str | None]:
    """The step a line's counters name, and its kind (``"step"`` or ``"epoch"``)."""
    for name in ("step", "iter", "iteration", "it", "batch"):
        if name in counters:
            value, total = counters[name]
            if "epoch" in counters and total:  # a counter within its epoch: Step [100/600]
                return counters["epoch"][0] * total + value, "step"
            return value, "step"
    if "epoch" in counters:
        return counters["epoch"][0], "epoch"
    return None, None
