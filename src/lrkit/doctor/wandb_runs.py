r"""Weights & Biases runs read from their local files: one table by step.

Every W&B run, online or offline, keeps what it logged in ``wandb/<run dir>/run-<id>.wandb`` (the
run directory is ``run-<date>-<id>`` online, ``offline-run-<date>-<id>`` offline, with a
``latest-run`` link to the newest). That file is W&B's transaction log: a 7-byte header (``:W&B``,
a magic number, a version) and then, in blocks of 32 KiB, chunks of at most one block -- a 7-byte
header (checksum, length, type: whole record, first, middle or last part) and the bytes -- whose
records are W&B's protocol-buffer ``Record`` messages (parsed with the ``wandb`` package's own
classes; ``pip install wandb``). A ``history`` record is one ``wandb.log`` call: its items are
``key -> JSON value``; a logged ``nan`` is ``NaN`` there and stays ``nan``.

The step of a row is the run's step metric when the logger set one, else W&B's own ``_step``:
``train/global_step`` (the Hugging Face ``Trainer``'s ``report_to="wandb"``: its ``_step`` counts
log calls, not optimizer steps), ``trainer/global_step`` (Lightning's ``WandbLogger``),
``epoch/epoch`` and ``batch/batch_step`` (Keras' ``WandbMetricsLogger``, whose ``epoch/`` or
``batch/`` prefix is dropped from the other keys; with batch logging, the epoch's validation keys
``epoch/val_*`` join the batch they followed). A call without the step metric joins the step
logged before it. A resumed run (``wandb.init(id=..., resume=...)``: a new run directory with the same
id) is read as one run, its parts joined in the order they started (a part that logs steps again
from an earlier checkpoint replaces what the run logged from there). A run still being written, or
cut short, is read up to its last complete record;
W&B writes the file a 32 KiB block at a time (a few hundred ``wandb.log`` calls), so ``lrkit
diagnose --follow`` sees a run in training that many calls late.

Runs are named ``<wandb dir>/<project>/<run name>`` (:func:`wandb_runs_under`), and the model's
chance level is read from the run's config when the ``Trainer`` logged its model configuration
(:mod:`lrkit.doctor.model_config`).

Example:
    >>> step_metric([{"_step": 0, "train/global_step": 10}, {"_step": 1, "train/global_step": 20}])
    'train/global_step'
"""
from __future__ import annotations

import glob
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from lrkit.doctor._tables import LogFormatError
from lrkit.doctor.model_config import chance_loss_from_config
from lrkit.doctor.walk import files_under

__all__ = ["WandbRun", "read_wandb", "run_parts", "step_metric", "wandb_runs_under"]

_HEADER = b":W&B"
_HEADER_SIZE = 7  # ":W&B", magic (2 bytes), version (1 byte)
_BLOCK = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
#: the step metrics loggers declare, in the order they are preferred to W&B's own ``_step``.
STEP_METRICS = ("train/global_step", "trainer/global_step", "batch/batch_step", "epoch/epoch", "global_step")
_INTERNAL = ("_step", "_runtime", "_timestamp", "_wandb")
#: bytes read for a run's header (its run and config records) when runs are listed
_HEAD_BYTES = 1 << 20


@dataclass
class _Parsed:
    """What a run file holds: its history rows (numbers only), names and config."""

    history: list[dict[str, float]] = field(default_factory=list)
    name: str = ""
    project: str = ""
    run_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)


class WandbRun:
    """A run read from its ``.wandb`` file: ``rows`` (``(where, {key: value})`` by step, the step
    under ``"step"``), ``name`` (display name), ``config`` (its logged config) and ``chance_loss``."""

    def __init__(self, rows: list[tuple[str, dict[str, float]]], name: str, config: dict[str, Any]) -> None:
        self.rows, self.name, self.config = rows, name, config
        self.chance_loss = chance_loss_from_config(config)


def _records(data: bytes, source: str) -> Iterator[bytes]:
    """The records of a W&B transaction log, up to the last complete one."""
    if not data.startswith(_HEADER) or len(data) < _HEADER_SIZE:
        raise LogFormatError(f"{source}: not a W&B run file (it does not start with ':W&B')")
    pos, parts = _HEADER_SIZE, []
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # the block's tail is padding
            pos += room
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start, pos = pos + _CHUNK_HEADER.size, pos + _CHUNK_HEADER.size + length
        if kind == 0 and length == 0:  # zeros: a preallocated tail, nothing written yet
            return
        if pos > len(data):  # cut short while being written
            return
        chunk = data[start:pos]
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = [chunk]
        elif kind == _MIDDLE and parts:
            parts.append(chunk)
        elif kind == _LAST and parts:
            yield b"".join(parts + [chunk])
            parts = []


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)  # NaN, Infinity and -Infinity included
    except ValueError:
        return None


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if len(item.nested_key) else item.key


def _parse(data: bytes, source: str, config_only: bool = False) -> _Parsed:
    """The history rows, names and config of a run file (``config_only``: stop at the first history
    record; the loggers write their config before it)."""
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError as exc:
        raise LogFormatError(f"{source}: reading a W&B run needs the wandb package: pip install wandb") from exc
    from google.protobuf.message import DecodeError

    out = _Parsed()
    for raw in _records(data, source):
        record = pb.Record()
        try:
            record.ParseFromString(raw)
        except DecodeError:
            break  # a torn record: keep what came before
        kind = record.WhichOneof("record_type")
        if kind == "history" and config_only:
            break
        if kind == "history":
            row = {}
            for item in record.history.item:
                v = _value(item.value_json)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[_key(item)] = float(v)
            out.history.append(row)
        elif kind == "run":
            out.name = record.run.display_name or record.run.run_id
            out.project, out.run_id = record.run.project, record.run.run_id
            out.config.update(_config(record.run.config))
        elif kind == "config":
            out.config.update(_config(record.config))
    return out


def _config(cfg: Any) -> dict[str, Any]:
    out = {}
    for item in cfg.update:
        v = _value(item.value_json)
        out[_key(item)] = v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v
    return out


def step_metric(history: Sequence[Mapping[str, float]]) -> str:
    """The key that counts the run's steps: the first of :data:`STEP_METRICS` logged, else ``_step``."""
    logged = {k for row in history for k in row}
    return next((k for k in STEP_METRICS if k in logged), "_step")


def _renamed(key: str, step: str) -> str | None:
    """A history key as the doctor reads it (``None``: left out)."""
    if key == step or key.startswith(_INTERNAL):
        return None
    for prefix in ("epoch/", "batch/"):  # Keras' WandbMetricsLogger
        if step.startswith(prefix) and key.startswith(prefix):
            return key[len(prefix):]
    if step == "batch/batch_step" and key.startswith("epoch/val_"):
        return key[len("epoch/"):]
    return key


def _rows(history: list[dict[str, Any]], source: str) -> list[tuple[str, dict[str, float]]]:
    step, current, rows = step_metric(history), None, []
    for i, row in enumerate(history):
        if step in row and math.isfinite(row[step]):
            current = row[step]
        if current is None:
            continue  # logged before any step: nothing to place it at
        out = {"step": current}
        for key, v in row.items():
            name = _renamed(key, step)
            if name is not None:
                out[name] = v
        rows.append((f"{source}: history record {i + 1}", out))
    return rows


def read_wandb(path: str | Path) -> WandbRun:
    """One run from its ``run-<id>.wandb`` file (or the run directory holding it).

    Raises:
        LogFormatError: not a W&B run file, no file in the directory, or ``wandb`` not installed.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise LogFormatError(f"{path}: no run-*.wandb file in this W&B run directory")
        path = files[0]
    parts = run_parts(path)
    rows: list[tuple[str, dict[str, float]]] = []
    name, config = "", {}
    for part in parts:
        run = _parse(part.read_bytes(), str(part))
        if not run.history:
            continue
        name, config = name or run.name, {**config, **run.config}
        rows = _joined(rows, _rows(run.history, str(part)), own_step=step_metric(run.history) == "_step")
    if not rows:
        raise LogFormatError(f"{path}: no history in this W&B run yet (W&B writes its file 32 KiB at a time: a run "
                             "that has just started shows nothing until its first block is full)")
    return WandbRun(rows, name, config)


def run_parts(path: Path) -> list[Path]:
    """The files of one run in the order they were started: ``path`` and those of the same run id in
    the same ``wandb/`` directory (``wandb.init(id=..., resume=...)`` starts a new run directory for
    each resumed part; its name carries the start time, ``[offline-]run-<date>_<time>-<id>``, and
    ``-1``, ``-2`` ... after a part started within the same second)."""
    run_id = path.stem[len("run-"):] if path.stem.startswith("run-") else None
    if run_id is None or f"-{run_id}" not in path.parent.name:
        return [path]
    found = {f.resolve(): f for f in path.parent.parent.glob(f"*/run-{glob.escape(run_id)}.wandb")
             if f.parent.name != "latest-run" and f"-{run_id}" in f.parent.name and f.is_file()}
    found.setdefault(path.resolve(), path)

    def started(f: Path) -> tuple[str, int, float]:
        name = f.parent.name
        again = name.rsplit(f"-{run_id}", 1)[-1].lstrip("-")
        return name.split("run-", 1)[-1][:15], int(again) if again.isdigit() else 0, f.stat().st_mtime

    return sorted(found.values(), key=started)


def _joined(rows: list[tuple[str, dict[str, float]]], later: list[tuple[str, dict[str, float]]], *,
            own_step: bool) -> list[tuple[str, dict[str, float]]]:
    """A run's rows with those of its next (resumed) part. A logger's step metric that starts again
    at or before the rows' last step is a resume from an earlier checkpoint: the rows from that step
    on are replaced by the part's (what the run went on with). W&B's own ``_step`` starts again at 0
    in a resumed offline run: the part's steps then follow the rows'."""
    if not rows or not later:
        return rows + later
    first, last = later[0][1]["step"], rows[-1][1]["step"]
    if own_step and first <= last:
        shift = last + 1 - first
        return rows + [(where, {**row, "step": row["step"] + shift}) for where, row in later]
    return [r for r in rows if r[1]["step"] < first] + later


def wandb_runs_under(root: str | Path, skip_outputs: set[Path] = frozenset(),
                     files: list[Path] | None = None) -> list[tuple[str, Path]]:
    """The W&B runs under ``root`` as ``(name, run file)``, named ``<wandb dir>/<project>/<run name>``
    (relative to ``root``; the run directory added where two runs share a name; a resumed run's
    parts, which share its id, are one run, :func:`run_parts`), but for a Hugging Face
    ``Trainer``'s run whose ``output_dir`` is in ``skip_outputs`` (its ``trainer_state.json`` is that
    run, read already). ``latest-run`` is a link to one of the others; a file that cannot be read is
    named by its run directory (reading it then says why). ``files``: the files under ``root``
    (:func:`lrkit.doctor.walk.files_under`, the default), when the caller has them."""
    root = Path(root)
    files = files_under(root) if files is None else files
    found: list[tuple[Path, dict[str, Any] | None]] = []
    seen: set[Path] = set()
    for f in [f for f in files if f.name.startswith("run-") and f.suffix == ".wandb"]:
        if "latest-run" in f.relative_to(root).parts or not f.is_file() or f.resolve() in seen:
            continue
        parts = run_parts(f)  # a resumed run: one run, listed by its first part
        seen.update(p.resolve() for p in parts)
        f = parts[0]
        head = _header(f)
        if head is None or head["output_dir"] is None or head["output_dir"] not in skip_outputs:
            found.append((f, head))
    names = [_run_name(root, f, head) for f, head in found]
    return [(n if names.count(n) == 1 or head is None else f"{n} ({f.parent.name})", f)
            for (f, head), n in zip(found, names)]


def _run_name(root: Path, f: Path, head: dict[str, Any] | None) -> str:
    """``<wandb dir relative to root>/<project>/<run name>`` (the run directory's name for a file
    that cannot be read)."""
    home = f.parent.parent  # the wandb/ directory
    prefix = f"{home.relative_to(root).as_posix()}/" if root in home.parents else ""
    return f"{prefix}{f.parent.name}" if head is None else f"{prefix}{head['project'] or 'wandb'}/{head['name']}"


def _header(path: Path) -> dict[str, Any] | None:
    """A run file's project, name, run id and the ``output_dir`` a ``Trainer`` logged (resolved
    against the directory ``wandb/`` was made in: a relative one is relative to where the training
    ran), read up to the first history record; ``None`` when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            run = _parse(f.read(_HEAD_BYTES), str(path), config_only=True)
    except (LogFormatError, OSError):
        return None
    out = run.config.get("output_dir")
    if isinstance(out, str) and out:
        out_path = Path(out)
        out = (out_path if out_path.is_absolute() else path.parent.parent.parent / out_path).resolve()
    else:
        out = None
    return {"project": run.project, "name": run.name or run.run_id or path.parent.name, "run_id": run.run_id,
            "output_dir": out}
