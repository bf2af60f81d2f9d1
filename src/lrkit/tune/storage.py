"""Where a study lives: in memory, a SQLite file, PostgreSQL (any SQLAlchemy URL) or a journal file.

``open_storage(None)`` keeps the study in memory. A URL with ``://`` is an SQLAlchemy database
URL (``sqlite:///study.db``, ``postgresql://user@host/db``, ``mysql+pymysql://...``) opened as
Optuna's ``RDBStorage``; ``journal:PATH`` is Optuna's ``JournalStorage`` over a file; a bare path
ending in ``.db`` or ``.sqlite`` is a SQLite file. Database storages run Optuna's heartbeat: a
trial whose process died (``kill -9``, a lost machine) is failed after ``grace_period`` seconds
and queued again with the same parameters, so no unfinished trial is lost and no finished one is
repeated.

Example:
    >>> storage_url("runs/study.db")
    'sqlite:///runs/study.db'
    >>> storage_url("postgresql://me@db/lr")
    'postgresql://me@db/lr'
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna

__all__ = ["open_storage", "storage_url", "HEARTBEAT_INTERVAL", "GRACE_PERIOD"]

HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30


def storage_url(spec: str) -> str:
    """Normalise a storage argument: bare ``*.db``/``*.sqlite`` paths become ``sqlite:///`` URLs."""
    if "://" in spec or spec.startswith("journal:"):
        return spec
    if spec.endswith((".db", ".sqlite", ".sqlite3")):
        return f"sqlite:///{spec}"
    raise ValueError(
        f"storage must be a database URL (sqlite:///study.db, postgresql://user@host/db), "
        f"journal:PATH or a *.db file, got {spec!r}"
    )


def _retry_callback() -> Any:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=None)


def open_storage(spec: str | None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD) -> Any:
    """An Optuna storage for ``spec`` (``None``: in memory); ``ValueError`` when it cannot be reached."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return spec  # an Optuna storage object, used as is
    url = storage_url(spec)
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        if not path.parent.is_dir():
            raise ValueError(f"storage {spec!r}: the directory {path.parent} does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:") and not path.parent.is_dir():
            raise ValueError(f"storage {spec!r}: the directory {path.parent} does not exist")
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period, heartbeat_stale_trial_callback=_retry_callback(),
                    )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
                # two workers creating the tables of a new database at once: the other one won (a
                # unique violation on a type, or "relation ... already exists" on a table)
                if attempt == 4 or not _lost_creation_race(exc):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as exc:
        raise ValueError(f"storage {_redact(url)} needs a database driver that is not installed "
                         f"({' '.join(str(exc.__cause__ or exc).split())[:200]}); for PostgreSQL: "
                         "pip install 'lrkit[tune]' (psycopg)") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise ValueError(f"storage {_redact(url)} cannot be reached: {detail[:300]}") from None


def _lost_creation_race(exc: Exception) -> bool:
    """``exc`` says another process created the schema first (so opening again will find it)."""
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    return "already exists" in str(getattr(exc, "orig", None) or exc)


def _redact(url: str) -> str:
    """The URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password to hide that we could find
        return url
