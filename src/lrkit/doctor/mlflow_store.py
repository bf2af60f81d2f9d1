r"""MLflow tracking stores read as logs: every run's metric histories as one table by step.

An MLflow run keeps each metric as its own history of ``(step, value, timestamp)``; the doctor
wants one row per step. :func:`read_store_run` puts the values of one step on one row; a key
logged twice at a step keeps its latest value (by timestamp), and a run resumed from an earlier
checkpoint (its steps going back) drops what it had logged from there on; a logged ``nan`` stays ``nan`` (a
NaN loss is a verdict) and a logged infinity, which MLflow stores as the largest float, is
infinite again.

Where runs are read from:

* ``mlflow.db`` (any SQLite file holding MLflow's ``experiments``, ``runs`` and ``metrics``
  tables; ``sqlite:///...``): the store MLflow >= 3 writes by default, and the ``Trainer``'s
  ``report_to="mlflow"`` with it;
* ``mlruns/`` (``file:...``): the file store of MLflow 2 and of Lightning's ``MLFlowLogger`` (its
  default ``tracking_uri``);
* any other tracking URI (``http(s)://`` tracking server, Databricks, a database URL) through
  MLflow's own ``MlflowClient`` (needs ``pip install mlflow-skinny``).

The two local stores are read directly, read-only, from the tables and files every MLflow
version since 1.x writes: MLflow's own stores refuse to open a database written by another MLflow
version until it is migrated (``mlflow db upgrade``, a write to the user's data), and MLflow 3
refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set. Reading a run here never writes.

Runs are named ``<experiment>/<run name>`` (the run id's first 8 characters added when two runs
share a name); deleted runs and experiments are left out. The model's chance level is read from
the run's parameters when the ``Trainer`` logged its model configuration (``architectures``,
``id2label``: :mod:`lrkit.doctor.model_config`).

Example:
    >>> is_tracking_uri("sqlite:///mlflow.db"), is_tracking_uri("runs/exp1"), is_tracking_uri("http://host:5000")
    (True, False, True)
"""
from __future__ import annotations

import ast
import math
import os
import re
import sqlite3
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from lrkit.doctor._tables import LogFormatError
from lrkit.doctor.model_config import chance_loss_from_config
from lrkit.doctor.resumes import as_resumed
from lrkit.doctor.walk import files_under

__all__ = ["StoreRun", "is_tracking_uri", "store_target", "stores_under", "store_runs", "read_store_run"]

_URI = re.compile(r"^(sqlite|file|https?|databricks(-uc)?|(postgresql|mysql|mssql)(\+\w+)?):", re.IGNORECASE)
_SQLITE_HEADER = b"SQLite format 3\x00"
_MLFLOW_TABLES = {"experiments", "runs", "metrics"}
_INFINITY = sys.float_info.max  # what MLflow stores for a logged +-inf
_CONFIG_KEYS = ("architectures", "id2label", "num_labels", "problem_type")
_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}  # a server that is down answers in seconds, not minutes


@dataclass(frozen=True)
class StoreRun:
    """One run of a tracking store: ``uri`` (the store), ``run_id``, its readable ``name``, and the
    ``output_dir`` a Hugging Face ``Trainer`` run logged as a parameter (resolved against the
    directory the local store sits in, where the training script ran), else ``None``."""

    uri: str
    run_id: str
    name: str
    output_dir: Path | None = None


def is_tracking_uri(text: str | Path) -> bool:
    """``True`` for a string MLflow reads as a tracking URI (``sqlite:``, ``file:``, ``http(s):``, ...)."""
    return isinstance(text, str) and bool(_URI.match(text))


def store_target(target: str | Path) -> str | None:
    """The tracking URI ``target`` names as a whole store: a tracking URI (that is not a local
    path), or the path of an MLflow SQLite file; ``None`` for anything else."""
    if is_tracking_uri(target) and not Path(target).exists():
        return str(target)
    p = Path(target)
    return sqlite_uri(p) if p.is_file() and p.suffix.lower() in (".db", ".sqlite", ".sqlite3") and is_mlflow_sqlite(p) else None


def is_mlflow_sqlite(path: Path) -> bool:
    """``True`` for a SQLite file holding MLflow's tables (read-only look)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != _SQLITE_HEADER:
                return False
        with _sqlite(path) as con:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except (OSError, sqlite3.Error):
        return False
    return _MLFLOW_TABLES <= names


def _file_store_root(run_dir: Path) -> Path | None:
    """The file store a run directory (``<root>/<experiment id>/<run id>``) belongs to, if it is one."""
    if (run_dir / "meta.yaml").is_file() and (run_dir / "metrics").is_dir() and (run_dir.parent / "meta.yaml").is_file():
        return run_dir.parent.parent
    return None


def stores_under(root: Path, files: list[Path] | None = None) -> list[tuple[str, Path, list[Path] | None]]:
    """The MLflow stores in (or around) a directory: ``(tracking URI, where it is, run directories)``.

    A file store is found from its run directories. When ``root`` is inside the store (an
    experiment's or one run's directory) only the runs under ``root`` count: the third item lists
    their directories (``None``: every run of the store). ``files``: the files under ``root``
    (:func:`lrkit.doctor.walk.files_under`, the default), when the caller has them.
    """
    files = files_under(root) if files is None else files
    found: list[tuple[str, Path, list[Path] | None]] = []
    file_roots: dict[Path, list[Path]] = {}
    for meta in [f for f in files if f.name == "meta.yaml"]:
        store = _file_store_root(meta.parent)
        if store is not None and ".trash" not in meta.parts:
            file_roots.setdefault(store, []).append(meta.parent)
    for store, run_dirs in file_roots.items():
        inside = store != root and store in root.parents
        found.append((store.resolve().as_uri(), store, run_dirs if inside else None))
    for f in files:
        if f.suffix.lower() in (".db", ".sqlite", ".sqlite3") and is_mlflow_sqlite(f):
            found.append((sqlite_uri(f), f, None))
    return found


def sqlite_uri(path: Path) -> str:
    """The tracking URI of a SQLite store file."""
    return f"sqlite:///{path.resolve()}"


def _local(uri: str) -> tuple[str, Path] | None:
    """``("sqlite" | "file", path)`` for a store on this machine, ``None`` for a remote one."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///"):
        return "sqlite", Path(unquote(uri[len("sqlite:///"):].split("?")[0]) or ":memory:")
    if parsed.scheme == "file":
        return "file", Path(unquote(parsed.path))
    return None


@contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield con
    finally:
        con.close()


# --------------------------------------------------------------------------------- listing
def store_runs(uri: str, *, prefix: str = "", run_dirs: list[Path] | None = None) -> list[StoreRun]:
    """The active runs of a store, oldest first within each experiment, named
    ``prefix + <experiment>/<run name>``; only the runs in ``run_dirs`` when given (a file store
    read from inside).

    Raises:
        LogFormatError: the store cannot be read (missing, not an MLflow store, server down).
    """
    local = _local(uri)
    base = None
    if local is None:
        found = _remote_runs(uri)
    else:
        kind, path = local
        if not path.exists():
            raise LogFormatError(f"{uri}: no such {'database file' if kind == 'sqlite' else 'directory'}")
        found = _sqlite_runs(uri, path) if kind == "sqlite" else _file_runs(path, run_dirs)
        base = path.resolve().parent
    found = sorted(found, key=lambda r: r[:2])
    named = [f"{prefix}{exp}/{name or rid}" for exp, _, name, rid, _ in found]
    counts: dict[str, int] = {}
    for name in named:
        counts[name] = counts.get(name, 0) + 1
    return [StoreRun(uri, rid, f"{name} ({rid[:8]})" if counts[name] > 1 else name,
                     (base / out).resolve() if out and base is not None else None)
            for name, (_, _, _, rid, out) in zip(named, found)]


_Found = tuple[str, int, str, str, "str | None"]  # experiment name, start time, run name, run id, output_dir


def _sqlite_runs(uri: str, path: Path) -> list[_Found]:
    """The active runs of a SQLite store."""
    if not is_mlflow_sqlite(path):
        raise LogFormatError(f"{uri}: not an MLflow database (no experiments, runs and metrics tables)")
    with _sqlite(path) as con:
        rows = con.execute(
            "SELECT e.name, COALESCE(r.start_time, 0), r.name, r.run_uuid, p.value FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id "
            "LEFT JOIN params p ON p.run_uuid = r.run_uuid AND p.key = 'output_dir' "
            "WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active'").fetchall()
    return [(str(e), int(t), str(n) if n else "", str(rid), out) for e, t, n, rid, out in rows]


def _meta(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - MLflow itself depends on PyYAML
        raise LogFormatError(f"{path}: reading an MLflow file store needs PyYAML (pip install pyyaml)") from exc
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LogFormatError(f"{path}: not a readable MLflow meta.yaml ({exc})") from None
    return meta if isinstance(meta, dict) else {}


def _file_runs(store: Path, run_dirs: list[Path] | None) -> list[_Found]:
    """The active runs of a file store."""
    if run_dirs is None:
        run_dirs = [m.parent for m in sorted(store.glob("*/*/meta.yaml")) if _file_store_root(m.parent) == store]
    out = []
    for d in run_dirs:
        exp, run = _meta(d.parent / "meta.yaml"), _meta(d / "meta.yaml")
        if exp.get("lifecycle_stage", "active") != "active" or run.get("lifecycle_stage", "active") != "active":
            continue
        name_tag = d / "tags" / "mlflow.runName"
        name = run.get("run_name") or (name_tag.read_text(encoding="utf-8").strip() if name_tag.is_file() else "")
        output_dir = d / "params" / "output_dir"
        out.append((str(exp.get("name", d.parent.name)), int(run.get("start_time") or 0), str(name),
                    str(run.get("run_id") or d.name),
                    output_dir.read_text(encoding="utf-8") if output_dir.is_file() else None))
    return out


@contextmanager
def _client(uri: str) -> Iterator[Any]:
    """An ``MlflowClient`` on a remote ``uri``, failing fast on a server that does not answer
    (unless the user set MLflow's own HTTP settings); its errors as :class:`LogFormatError`."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise LogFormatError(f"{uri}: reading runs from an MLflow server needs mlflow (pip install mlflow-skinny)") from None
    set_here = [k for k in _HTTP_SETTINGS if k not in os.environ]
    os.environ.update({k: _HTTP_SETTINGS[k] for k in set_here})
    try:
        yield MlflowClient(tracking_uri=uri)
    except MlflowException as exc:
        raise LogFormatError(f"{uri}: MLflow could not read this store ({_first_line(exc)})") from None
    finally:
        for k in set_here:
            os.environ.pop(k, None)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _remote_runs(uri: str) -> list[_Found]:
    with _client(uri) as client:
        from mlflow.entities import ViewType

        experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
        runs: list[Any] = []
        token = None
        while experiments:
            page = client.search_runs(list(experiments), run_view_type=ViewType.ACTIVE_ONLY, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    return [(experiments[r.info.experiment_id], int(r.info.start_time or 0), r.info.run_name or "", r.info.run_id,
             None) for r in runs]


# --------------------------------------------------------------------------------- reading
def read_store_run(uri: str, run_id: str) -> tuple[list[tuple[str, dict[str, float]]], float | None]:
    """A run's metrics as ``(location, {"step": s, key: value, ...})`` rows by step, and its chance level.

    Raises:
        LogFormatError: no such run, a store that cannot be read, or a run with no metric.
    """
    local = _local(uri)
    if local is None:
        history, params = _remote_history(uri, run_id)
    elif local[0] == "sqlite":
        history, params = _sqlite_history(local[1], run_id)
    else:
        history, params = _file_history(local[1], run_id)
    latest: dict[int, dict[str, tuple[int, float]]] = {}
    for key, step, timestamp, value in _after_rewinds(history):
        slot = latest.setdefault(int(step), {})
        if key not in slot or timestamp >= slot[key][0]:
            slot[key] = (timestamp, _unclamped(value))
    if not latest:
        raise LogFormatError(f"{uri}#{run_id}: the run has no metrics")
    rows = [(f"{uri}#{run_id}@step{s}", {"step": s, **{k: v for k, (_, v) in vals.items()}})
            for s, vals in sorted(latest.items())]
    return rows, _chance_from_params(params)


def _after_rewinds(history: Any) -> list[tuple[str, int, int, float]]:
    """``(key, step, timestamp, value)`` of a run's metrics without what a run resumed from an
    earlier checkpoint logged again (:func:`lrkit.doctor.resumes.as_resumed`, key by key)."""
    by_key: dict[str, list[tuple[int, int, float]]] = {}
    for key, step, timestamp, value in history:
        by_key.setdefault(key, []).append((int(timestamp), int(step), value))
    return [(key, step, timestamp, value) for key, entries in by_key.items()
            for timestamp, step, value in as_resumed(entries)]


def _unclamped(value: float) -> float:
    return math.copysign(math.inf, value) if abs(value) >= _INFINITY else value


def _sqlite_history(path: Path, run_id: str) -> tuple[list[tuple[str, int, int, float]], dict[str, str]]:
    with _sqlite(path) as con:
        if con.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is None:
            raise LogFormatError(f"{sqlite_uri(path)}: no run {run_id!r}")
        history = [(str(k), int(s), int(t), math.nan if nan else float(v)) for k, s, t, v, nan in con.execute(
            "SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid = ?", (run_id,))]
        marks = ",".join("?" * len(_CONFIG_KEYS))
        params = dict(con.execute(f"SELECT key, value FROM params WHERE run_uuid = ? AND key IN ({marks})",
                                  (run_id, *_CONFIG_KEYS)).fetchall())
    return history, params


def _file_history(store: Path, run_id: str) -> tuple[list[tuple[str, int, int, float]], dict[str, str]]:
    dirs = [d for d in store.glob(f"*/{run_id}") if _file_store_root(d) == store]
    if not dirs:
        raise LogFormatError(f"{store.as_uri()}: no run {run_id!r}")
    run_dir = dirs[0]
    history = []
    metrics = run_dir / "metrics"
    for f in sorted(p for p in metrics.rglob("*") if p.is_file()):
        key = f.relative_to(metrics).as_posix()
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:  # "timestamp value step" (before MLflow 1.0: no step)
                history.append((key, int(parts[2]) if len(parts) > 2 else 0, int(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                raise LogFormatError(f"{f}:{n}: not an MLflow metric line ('timestamp value step'): {line!r}") from None
    params = {k: (run_dir / "params" / k).read_text(encoding="utf-8") for k in _CONFIG_KEYS
              if (run_dir / "params" / k).is_file()}
    return history, params


def _remote_history(uri: str, run_id: str) -> tuple[list[tuple[str, int, int, float]], dict[str, str]]:
    with _client(uri) as client:
        run = client.get_run(run_id)
        history = [(key, m.step, m.timestamp, float(m.value))
                   for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
    return history, dict(run.data.params)


def _chance_from_params(params: dict[str, str]) -> float | None:
    """The chance level from a run's parameters, when they hold a Hugging Face model configuration.

    MLflow keeps parameters as strings (``"['BertForSequenceClassification']"``); the ``Trainer``
    logs ``id2label`` always, so a missing one means MLflow dropped it (too long): unknown.
    """
    if "architectures" not in params or "id2label" not in params:
        return None
    config: dict[str, Any] = {}
    for key in _CONFIG_KEYS:
        if key in params:
            try:
                config[key] = ast.literal_eval(params[key])
            except (ValueError, SyntaxError):
                config[key] = params[key]
    return chance_loss_from_config(config)
