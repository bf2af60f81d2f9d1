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
  ``eval`` get a ``val_`` prefix, as the Keras TensorBoard callback writes them; TF2 scalar tensors
  and Keras' epoch and iteration clocks: :mod:`lrkit.doctor.tensorboard_events`);
* a directory holding **one** run (see :func:`find_runs`: a SummaryWriter run, a Lightning
  ``version_N``, a Hugging Face output directory with ``checkpoint-N`` folders, an MLflow store
  with one run); a directory of several runs is read run by run with :func:`read_runs`;
* an MLflow store holding one run: ``mlflow.db``, an ``mlruns/`` directory (or one of its
  experiments or runs), a tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``):
  :mod:`lrkit.doctor.mlflow_store`;
* a Weights & Biases run: its ``run-<id>.wandb`` file, its run directory, or a ``wandb/``
  directory holding one run (online and offline runs alike; needs ``wandb``):
  :mod:`lrkit.doctor.wandb_runs`;
* a console log (a file of another name, e.g. ``train.out``, or a pipe): the Hugging Face
  ``Trainer``'s printed dicts, Keras ``fit``'s epoch lines, or the loss lines a script printed
  itself, :mod:`lrkit.doctor.console_logs`;
* ``"-"`` (standard input) or a pipe such as ``/dev/stdin``: read once, format sniffed;
* in memory: a Keras ``History`` object (or its ``.history`` dict), a dict of lists, or a list
  of dicts.

Column names are normalised as :mod:`lrkit.doctor.records` lists (``loss``, ``lr``, ``val_loss``,
...), unless named with the ``loss=``, ``lr=`` and ``val_loss=`` keywords.

Example:
    >>> recs = read_log([{"step": 0, "train_loss": 2.3, "lr": 0.1}, {"step": 1, "train_loss": 2.1, "lr": 0.1}])
    >>> recs.loss.tolist(), recs.step.tolist()
    ([2.3, 2.1], [0, 1])
    >>> read_log({"n_iter": [0, 1], "Loss/train": [2.0, 1.5], "Loss/other": [9.0, 9.0]}).renamed["loss"]
    'Loss/train'
    >>> read_log({"step": [0, 1], "nll": [2.0, 1.5]}, loss="nll").loss.tolist()
    [2.0, 1.5]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lrkit.doctor._tables import LogFormatError, Progress, rows_table
from lrkit.doctor.mlflow_store import StoreRun, read_store_run, store_runs, store_target, stores_under
from lrkit.doctor.records import (  # noqa: F401  (ALIASES and LogRecords: this module's public names too)
    _PART_DIRS,
    ALIASES,
    LogRecords,
    _check_named,
    _from_object,
    _must_be_numeric,
    _no_training_loss_yet,
    _read_file,
    _records,
    _tensorboard,
)
from lrkit.doctor.walk import files_under
from lrkit.doctor.wandb_runs import wandb_runs_under

__all__ = ["LogFormatError", "LogRecords", "read_log", "read_runs", "find_runs", "ALIASES"]

# --------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One run found in a directory: its ``name`` (relative path) and the ``path`` to read; for a
    run of an MLflow store, the ``store`` run to read (or the ``problem`` that keeps it unread)."""

    name: str
    path: Path
    store: StoreRun | None = None
    problem: str | None = None


_LOG_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def find_runs(directory: str | Path) -> list[Run]:
    """The runs a directory (or an MLflow tracking URI) holds, each named by its path relative to ``directory``.

    * TensorBoard: every directory holding event files is a run (a SummaryWriter run in
      ``runs/``, a Lightning ``version_N``); sub-directories named ``train``, ``validation``,
      ``val``, ``eval`` or ``test`` are parts of their parent's run (as Keras writes them);
    * Hugging Face: an output directory is one run, read from its ``trainer_state.json``, or from
      its newest ``checkpoint-N/trainer_state.json`` (the most complete history); the TensorBoard
      events the ``Trainer`` wrote into the same directory's ``runs/`` (``report_to="tensorboard"``),
      and its MLflow run (``report_to="mlflow"``, known by the ``output_dir`` it logged), are that
      run again, not another;
    * every ``.csv``/``.tsv``/``.jsonl``/``.ndjson`` file is a run (a Lightning ``metrics.csv``,
      a Keras ``CSVLogger`` file); other ``.json`` files (configurations) are not logs;
    * never below ``directory``: hidden directories (``.venv``, ``.git``), virtual environments,
      ``site-packages``, ``node_modules`` (:mod:`lrkit.doctor.walk`);
    * MLflow: every active run of a store (``mlflow.db``, an ``mlruns/`` file store, or the store
      a tracking URI such as ``sqlite:///mlflow.db`` or ``http://host:5000`` names), named
      ``<store>/<experiment>/<run name>`` (:mod:`lrkit.doctor.mlflow_store`; a server needs ``mlflow``);
    * Weights & Biases: every run directory holding a ``run-<id>.wandb`` file (``wandb/run-...``,
      ``wandb/offline-run-...``), named ``<wandb dir>/<project>/<run name>``
      (:mod:`lrkit.doctor.wandb_runs`), but for a ``Trainer``'s run (``report_to="wandb"``) whose
      ``output_dir`` is read already: its ``trainer_state.json``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("a", "b"):
        ...     (d / name).mkdir(); _ = (d / name / "log.csv").write_text("step,loss\\n0,1.0\\n")
        >>> [r.name for r in find_runs(d)]
        ['a/log.csv', 'b/log.csv']
    """
    uri = store_target(directory)
    if uri is not None:  # a whole store: its runs by experiment and name
        return [Run(r.name, Path(directory), store=r) for r in store_runs(uri)]
    root = Path(directory)
    found = files_under(root)  # hidden directories, virtual environments and installed packages left out
    runs: dict[Path, Path] = {}  # run root -> what to read
    event_dirs = {p.parent for p in found if "tfevents" in p.name}
    for d in sorted(event_dirs):
        top = d
        while top != root and top.name.lower() in _PART_DIRS:
            top = top.parent
        runs.setdefault(top, top)
    states = [p for p in found if p.name == "trainer_state.json"]
    by_output: dict[Path, list[Path]] = {}
    for s in states:
        # a checkpoint's state belongs to the Trainer's output directory -- unless the checkpoint
        # folder is the directory given (a run of its own: its output directory is not being read)
        out = s.parent.parent if _CHECKPOINT.match(s.parent.name) and s.parent != root else s.parent
        by_output.setdefault(out, []).append(s)
    for out, files in by_output.items():
        for events in [k for k in runs if (out / "runs") in k.parents]:
            del runs[events]  # the Trainer's own TensorBoard copy of the run its trainer_state.json holds
        direct = [f for f in files if f.parent == out]
        if direct:
            runs[out / "trainer_state.json"] = direct[0]
        else:
            newest = max(files, key=lambda f: int(_CHECKPOINT.match(f.parent.name).group(1)))
            runs[out / "trainer_state.json"] = newest
    for f in found:
        if f.suffix.lower() in _LOG_SUFFIXES:
            runs[f] = f
    outputs = {out.resolve() for out in by_output}
    out_runs = []
    for key in sorted(runs, key=lambda p: str(p)):
        rel = key.relative_to(root) if key != root else Path(".")
        name = str(rel) if str(rel) != "." else root.name
        if key.name == "trainer_state.json" and runs[key].parent != key.parent:
            name = str(runs[key].relative_to(root))
        out_runs.append(Run(name, runs[key]))
    # a Trainer's report_to="wandb" copy of a run read from its trainer_state.json is not another run
    out_runs += [Run(name, f) for name, f in wandb_runs_under(root, skip_outputs=outputs, files=found)]
    return out_runs + _mlflow_runs(root, outputs, found)


def _mlflow_runs(root: Path, trainer_outputs: set[Path], files: list[Path]) -> list[Run]:
    """The runs of the MLflow stores in ``root`` (a store that cannot be listed is one unread run),
    but for a ``Trainer``'s runs whose ``output_dir`` is among ``trainer_outputs``: its
    ``trainer_state.json`` holds the same run."""
    out: list[Run] = []
    for uri, where, run_dirs in stores_under(root, files):
        rel = where.relative_to(root) if root in where.parents else Path(".")
        prefix = "" if str(rel) == "." else f"{rel}/"
        try:
            out.extend(Run(r.name, where, store=r) for r in store_runs(uri, prefix=prefix, run_dirs=run_dirs)
                       if r.output_dir not in trainer_outputs)
        except LogFormatError as exc:
            out.append(Run(str(rel) if str(rel) != "." else root.name, where, problem=str(exc)))
    return out


def read_runs(directory: str | Path, *, loss: str | None = None, lr: str | None = None,
              val_loss: str | None = None) -> dict[str, LogRecords]:
    """Every run in ``directory`` (see :func:`find_runs`), read with :func:`read_log`, by name.

    Raises:
        LogFormatError: the directory holds no run (the message says what was looked for).
    """
    runs = find_runs(directory)
    if not runs:
        raise LogFormatError(_no_runs(Path(directory)))
    return {r.name: read_run(r, loss=loss, lr=lr, val_loss=val_loss) for r in runs}


def read_run(run: Run, *, loss: str | None = None, lr: str | None = None, val_loss: str | None = None,
             progress: Progress | None = None) -> LogRecords:
    """One run of :func:`find_runs`, read with :func:`read_log` (or from its MLflow store)."""
    named = _check_named({"loss": loss, "lr": lr, "val_loss": val_loss})
    if run.problem is not None:
        raise LogFormatError(run.problem)
    if run.store is not None:
        return _store_run(run.store, named)
    if run.path.is_dir():
        return _tensorboard(run.path, named)
    return _read_file(run.path, named, progress)


def select_run(runs: Sequence[Run], wanted: str, where: str) -> Run:
    """The run named ``wanted`` (its name as listed, or an MLflow run id) among ``runs``.

    Raises:
        LogFormatError: no run has that name (the message lists the names).
    """
    for r in runs:
        if wanted in (r.name, r.store.run_id if r.store else None):
            return r
    names = ", ".join(r.name for r in runs[:8]) + (", ..." if len(runs) > 8 else "")
    raise LogFormatError(f"{where}: no run named {wanted!r}; its runs are: {names}")


def _store_run(run: StoreRun, named: Mapping[str, str]) -> LogRecords:
    rows, chance = read_store_run(run.uri, run.run_id)
    names = list(dict.fromkeys(k for _, r in rows for k in r))
    empty = _no_training_loss_yet([r for _, r in rows], named)  # a Trainer's report_to="mlflow", no loss yet
    records = _records(rows_table(rows, run.name, keep=_must_be_numeric(named)(names)), named, empty_loss_ok=empty)
    records.chance_loss = chance
    return records




def _no_runs(path: Path | str) -> str:
    if store_target(path) is not None:
        return f"{path}: no runs in this MLflow store (deleted runs are left out)"
    return (f"{path}: no runs in this directory (looked for TensorBoard event files *tfevents*, "
            "trainer_state.json, .csv, .tsv, .jsonl and .ndjson logs, MLflow stores mlruns/ and mlflow.db, "
            "W&B runs wandb/*/run-*.wandb)")


# --------------------------------------------------------------------------------- public
def read_log(path_or_obj: Any, *, loss: str | None = None, lr: str | None = None, val_loss: str | None = None,
             progress: Progress | None = None) -> LogRecords:
    """Read a training log from a file, a directory or an in-memory object.

    Args:
        path_or_obj: a path (``str``/``Path``) to a CSV, JSONL, JSON or TensorBoard event file,
            a directory holding one run (:func:`find_runs`), ``"-"`` for standard input; a Keras
            ``History``; a dict of lists; a list of dicts; or a :class:`LogRecords` (returned as is).
        loss, lr, val_loss: the column (or TensorBoard tag) holding the training loss, the
            learning rate, the validation loss, when the default names do not find it (e.g.
            ``loss="nll"``; matched exactly, then ignoring case).
        progress: called as ``progress(stage, fraction)`` while a large file is read and parsed
            (``lrkit diagnose`` draws a progress bar with it on a terminal).

    Returns:
        :class:`LogRecords` with normalised column names, one row per step, sorted by step.

    Raises:
        LogFormatError: (a ``ValueError``) empty input, malformed JSON line, no loss column
            (listing the columns found), a named column that is not there, a non-numeric cell in
            a used column, an unknown format, a directory with no run or with several runs —
            naming the file and line.
        FileNotFoundError: the path does not exist.

    Example:
        >>> read_log({"epoch": [0, 1, 2], "loss": [1.0, 0.5, 0.25], "val_loss": [1.1, 0.6, 0.4]}).names
        ['step', 'loss', 'val_loss']
    """
    named = _check_named({"loss": loss, "lr": lr, "val_loss": val_loss})
    if isinstance(path_or_obj, LogRecords):
        return path_or_obj
    if isinstance(path_or_obj, (str, Path)):
        path = Path(path_or_obj)
        if str(path_or_obj) == "-":
            return _read_file(Path("-"), named, progress)
        store = store_target(path_or_obj) is not None
        if not store and not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        if store or path.is_dir():
            runs = find_runs(path_or_obj)
            if not runs:
                raise LogFormatError(_no_runs(path_or_obj))
            if len(runs) > 1:
                names = ", ".join(r.name for r in runs[:8]) + (", ..." if len(runs) > 8 else "")
                raise LogFormatError(
                    f"{path_or_obj}: holds {len(runs)} runs ({names}); read one of them, or all with read_runs() "
                    "(lrkit diagnose DIR gives one verdict per run; --run NAME reads one)"
                )
            return read_run(runs[0], loss=loss, lr=lr, val_loss=val_loss, progress=progress)
        return _read_file(path, named, progress)
    hist = getattr(path_or_obj, "history", None)
    if isinstance(hist, Mapping):  # keras.callbacks.History
        epochs = getattr(path_or_obj, "epoch", None)
        data = {k: list(v) for k, v in hist.items()}
        if epochs is not None and len(epochs) and all(len(v) == len(epochs) for v in data.values()) and "epoch" not in data:
            data = {"epoch": list(epochs), **data}
        return _from_object(data, "<keras History>", named)
    if isinstance(path_or_obj, (Mapping, list, tuple)):
        return _from_object(path_or_obj, "<memory>", named)
    raise LogFormatError(
        f"read_log: cannot read a log from {type(path_or_obj).__name__}; pass a path, a Keras History, "
        "a dict of lists or a list of dicts"
    )
