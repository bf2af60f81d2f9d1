"""Scalars of TensorBoard event files, by step: the legacy ``simple_value`` scalars that PyTorch's
``SummaryWriter`` (Lightning, the Hugging Face ``Trainer``) writes, and the TF2 scalar *tensors*
that ``tf.summary.scalar`` writes -- what the Keras ``TensorBoard`` callback on TensorFlow produces.

**Keras' two clocks.** The Keras callback writes ``epoch_<metric>`` at step = the epoch index
(``train/`` and ``validation/`` sub-directories), and, on an iteration clock, ``batch_<metric>``
(``update_freq`` a number or ``"batch"``) and ``evaluation_<metric>_vs_iterations`` (the validation
results again, at the optimizer step they were taken). Put in one table the two clocks would
interleave epochs 0, 1, 2 with steps 44, 88, 132. Where an iteration clock is present, the rows go
on it: epoch ``e`` is dated at the ``e``-th validation's iteration when the log has them (an epoch's
validation runs at its end), a ``batch_<metric>`` is named ``<metric>`` and an
``evaluation_<metric>_vs_iterations`` ``val_<metric>`` (the same values as the validation's
``epoch_<metric>``, which is then dropped); epoch-clock tags that cannot be dated are dropped.
Without an iteration clock, steps are the epoch indices, as the log holds them. A run resumed in the
same directory from an earlier checkpoint (a new event file whose steps go back) is read as it went
on (:mod:`lrkit.doctor.resumes`). Only tags read from
TF2 tensors are taken for Keras' (a SummaryWriter's scalars share one clock, the global step,
whatever their names).

Example (a log Keras wrote with ``validation_data`` and the default ``update_freq="epoch"``: rows
at the validations' steps 44, 88, ...)::

    rows = scalar_rows(Path("logs/fit"), val_dirs=("validation",))
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lrkit.doctor._tables import LogFormatError
from lrkit.doctor.resumes import as_resumed

__all__ = ["scalar_rows"]

_EVAL_VS_ITER = re.compile(r"^evaluation_(.+)_vs_iterations$")
_BATCH = "batch_"
_EPOCH = "epoch_"


def _series(acc: Any) -> tuple[dict[str, list[tuple[int, float]]], set[str]]:
    """Every scalar tag of one event directory: legacy scalars, and TF2 tensors of the scalars
    plugin; and the tags read from tensors (only those can be Keras' on TensorFlow)."""
    out: dict[str, list[tuple[int, float]]] = {}
    from_tensors: set[str] = set()
    tags = acc.Tags()
    for tag in tags.get("scalars", []):
        entries = [(ev.wall_time, int(ev.step), float(ev.value)) for ev in acc.Scalars(tag)]
        out[tag] = [(step, value) for _, step, value in as_resumed(entries)]
    tensor_tags = [t for t in tags.get("tensors", []) if t not in out]
    if tensor_tags:
        from tensorboard.util.tensor_util import make_ndarray

        for tag in tensor_tags:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue  # Keras' model graph, histograms written as tensors, text...
            entries = []
            for ev in acc.Tensors(tag):
                arr = make_ndarray(ev.tensor_proto)
                if arr.size == 1 and arr.dtype.kind in "fiub":
                    entries.append((ev.wall_time, int(ev.step), float(arr.reshape(()))))
            if entries:
                out[tag] = [(step, value) for _, step, value in as_resumed(entries)]
                from_tensors.add(tag)
    return out, from_tensors


def _epoch_dates(runs: list[tuple[bool, dict[str, list[tuple[int, float]]], set[str]]]) -> dict[int, int] | None:
    """Epoch index -> the optimizer step of its validation, from a validation directory holding both
    ``epoch_<m>`` and ``evaluation_<m>_vs_iterations`` with as many points."""
    for is_val, series, _ in runs:
        if not is_val:
            continue
        for tag, values in series.items():
            m = _EVAL_VS_ITER.match(tag)
            epochs = series.get(_EPOCH + m.group(1)) if m else None
            if epochs and len(epochs) == len(values):
                return {e: s for (e, _), (s, _) in zip(sorted(epochs), sorted(values))}
    return None


def scalar_rows(targets: list[Path], root: Path, val_dirs: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """``{step: {name: value}}`` over the event directories ``targets`` under ``root``; the tags of a
    sub-directory named in ``val_dirs`` get a ``val_`` prefix (``epoch_`` dropped: ``val_loss``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = []
    for t in targets:
        acc = EventAccumulator(str(t), size_guidance={"scalars": 0, "tensors": 0})
        try:
            acc.Reload()
        except Exception as exc:  # corrupted event files raise various errors
            raise LogFormatError(f"{t}: not a readable TensorBoard event file ({exc})") from None
        rel = t.relative_to(root) if root.is_dir() and t != root else Path(".")
        runs.append((any(part.lower() in val_dirs for part in rel.parts), *_series(acc)))
    # Keras writes TF2 tensors (SummaryWriter's scalars keep one clock, whatever their names), and
    # its batch_<m> comes with its epoch_<m> (a user's own "batch_size" scalar is no clock)
    keras_tags = {tag for _, _, from_tensors in runs for tag in from_tensors}
    batch_tags = {t for t in keras_tags if t.startswith(_BATCH) and _EPOCH + t[len(_BATCH):] in keras_tags}
    iteration_clock = bool(batch_tags) or any(_EVAL_VS_ITER.match(t) for t in keras_tags)
    dates = _epoch_dates(runs) if iteration_clock else None
    rows: dict[int, dict[str, float]] = {}
    for is_val, series, from_tensors in runs:
        for tag, values in series.items():
            name, date = tag, None
            if iteration_clock and tag in from_tensors:
                m = _EVAL_VS_ITER.match(tag)
                if m:
                    name = m.group(1)
                elif tag in batch_tags:
                    name = tag[len(_BATCH):]
                elif tag.startswith(_EPOCH):
                    if dates is None or is_val:  # undatable, or the validation's copy of the above
                        continue
                    date = dates
            if is_val:
                name = "val_" + (name[len(_EPOCH):] if name.startswith(_EPOCH) else name)
            for step, value in values:
                if date is not None:
                    if step not in date:
                        continue
                    step = date[step]
                rows.setdefault(step, {})[name] = value
    return rows
