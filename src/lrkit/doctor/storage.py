r"""Where the guard keeps its snapshots: in memory, or on disk crash-safely (pure core).

:class:`MemoryStore` keeps the trainer's state objects. :class:`DiskStore` pickles each one into
a directory of its own, ``<storage_dir>/<run_id>/``, and keeps there:

* ``snap-<n>.pkl`` -- one file per snapshot, written **atomically**: to ``.snap-<n>.pkl.tmp``,
  flushed and ``fsync``-ed, then ``os.replace``-d onto its name and the directory ``fsync``-ed, so
  a file either is complete or does not exist, even after ``kill -9`` or a power cut;
* ``manifest.json`` -- written the same way after every change, and only after the files it names
  are durable: the run id, the guard's clock and LR multiplier, every kept snapshot's step, LR
  multiplier, doctor state and verification record, and the interventions. (The RNG states --
  torch, CUDA, NumPy, Python, the loaders' generators -- are in each snapshot file, as the
  trainer's state holds them.)
* ``lock`` -- held with ``fcntl.flock`` while a guard uses the directory: a second guard given the
  same ``run_id`` is refused with an error naming the directory; the kernel releases the lock when
  the process dies, so a restarted run can take it over and **resume** from the manifest. (Linux
  and macOS. Where ``fcntl`` is missing, e.g. Windows, the lock is an ``O_EXCL`` file holding the
  owner's pid: a stale one left by a dead process is taken over when that pid no longer exists.)

A guard without a ``run_id`` gets a fresh unique one, so guards sharing a ``storage_dir`` never
see each other's files. Disk writes run on one background thread (in order: the snapshot file,
then the manifest), so training goes on while a large state is pickled and synced; a read waits
for pending writes. :meth:`DiskStore.close` removes the run's directory (and the ``storage_dir``
if the store created it as a temporary directory); a ``weakref.finalize`` does the same if the
store is garbage-collected or the interpreter exits without ``close()``. Temporary directories of
runs killed with ``kill -9`` (``lrkit-guard-*`` under the system temp dir, whose lock no process
holds) are removed when the next anonymous disk store is created, and so are the directories of
anonymous runs (no ``run_id``) killed in a ``storage_dir`` when the next store opens there: they
can never be resumed. A run with a ``run_id`` is kept for its resume.

A snapshot file that is missing, truncated or fails to unpickle raises :class:`SnapshotError`
naming it (the guard then falls back to the next good snapshot).

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = DiskStore(d, run_id="demo")
    ...     key = store.put({"w": [1.0, 2.0]})
    ...     store.write_manifest({"clock": 1})
    ...     got = store.get(key), DiskStore.read_manifest(d, "demo")["clock"]
    ...     store.close()
    >>> got
    ({'w': [1.0, 2.0]}, 1)
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["MemoryStore", "DiskStore", "SnapshotError", "StorageInUse", "TEMP_PREFIX", "live_run_dirs"]

TEMP_PREFIX = "lrkit-guard-"
MANIFEST = "manifest.json"
_LIVE: set[str] = set()  # run directories that exist now and belong to this process
_LIVE_LOCK = threading.Lock()


def live_run_dirs() -> set[str]:
    """The run directories this process has created and not yet removed (for leak checks)."""
    with _LIVE_LOCK:
        return set(_LIVE)


class SnapshotError(RuntimeError):
    """A snapshot file is missing or cannot be read; ``path`` names it."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class StorageInUse(RuntimeError):
    """Another live guard holds this run directory."""


class MemoryStore:
    """Keeps the state objects themselves.

    ``on_release``, when set, receives each state the store lets go of (:meth:`drop`): nothing
    reads it again, so a trainer may reuse its memory for the next snapshot.
    """

    on_disk = False

    def __init__(self) -> None:
        self._items: dict[int, Any] = {}
        self._n = 0
        self.on_release: Callable[[Any], None] | None = None

    def put(self, state: Any) -> int:
        self._n += 1
        self._items[self._n] = state
        return self._n

    def get(self, key: Any) -> Any:
        if key not in self._items:
            raise SnapshotError(f"snapshot {key} is not in memory", str(key))
        return self._items[key]

    def drop(self, key: Any) -> None:
        state = self._items.pop(key, None)
        if state is not None and self.on_release is not None:
            self.on_release(state)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Nothing to persist in memory."""

    def flush(self) -> None:
        """Nothing pending in memory."""

    def close(self) -> None:
        self._items.clear()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Any) -> int:
    """Write a file atomically: ``write(fh)`` into a temporary sibling, fsync, rename; return its size."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(d)
    return size


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


class _Lock:
    """An exclusive, non-blocking lock on ``<dir>/lock`` (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "lock")
        self.fd: int | None = None
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise StorageInUse(
                    f"the guard storage {directory} is in use by another guard (pid {owner}); give each guard its "
                    "own run_id (or leave run_id=None for a unique one)"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self.fd = fd
            return
        # pragma: no cover - no fcntl: an O_EXCL pid file, taken over when its owner is dead
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(self.path) as fh:
                        owner = int(fh.read().strip() or "0")
                except (OSError, ValueError):
                    owner = 0
                if owner and _pid_alive(owner):
                    raise StorageInUse(
                        f"the guard storage {directory} is in use by another guard (pid {owner}); give each guard "
                        "its own run_id"
                    ) from None
                os.remove(self.path)
                continue
            os.write(fd, str(os.getpid()).encode())
            self.fd = fd
            return

    @staticmethod
    def held(directory: str) -> bool:
        """Whether a live process holds ``<dir>/lock`` (without taking it for long)."""
        path = os.path.join(directory, "lock")
        if not os.path.exists(path):
            return False
        if fcntl is None:  # pragma: no cover
            try:
                with open(path) as fh:
                    return _pid_alive(int(fh.read().strip() or "0"))
            except (OSError, ValueError):
                return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we may have taken
        return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _sweep_stale_temp_dirs() -> None:
    """Remove ``lrkit-guard-*`` temporary directories whose every run lock is free (their guards died)."""
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:  # pragma: no cover
        return
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        top = os.path.join(root, name)
        try:
            if time.time() - os.path.getmtime(top) < 60:  # maybe still being set up by its owner
                continue
            runs = [os.path.join(top, r) for r in os.listdir(top)]
        except OSError:
            continue
        # only directories in this module's layout (every entry a run directory with a lock file)
        # whose every lock is free: their guards died
        if runs and all(os.path.isdir(r) and os.path.exists(os.path.join(r, "lock")) for r in runs) and not any(
            _Lock.held(r) for r in runs
        ):
            shutil.rmtree(top, ignore_errors=True)


_ANONYMOUS = re.compile(r"run-\d+-[0-9a-f]{8}")


def _sweep_dead_anonymous_runs(root: str) -> None:
    """Remove the directories of anonymous runs (``run-<pid>-<8 hex>``: no ``run_id``, so nothing can
    resume them) under ``root`` whose lock no process holds: guards killed with ``kill -9``."""
    try:
        names = os.listdir(root)
    except OSError:  # pragma: no cover
        return
    for name in names:
        run_dir = os.path.join(root, name)
        if not _ANONYMOUS.fullmatch(name) or not os.path.exists(os.path.join(run_dir, "lock")):
            continue
        try:
            if time.time() - os.path.getmtime(run_dir) < 60 or _Lock.held(run_dir):  # live, or being set up
                continue
        except OSError:
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        with _LIVE_LOCK:
            _LIVE.discard(run_dir)


def _cleanup(run_dir: str, top: str | None, lock: _Lock, pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=True)
    lock.release()
    shutil.rmtree(run_dir, ignore_errors=True)
    if top is not None:
        shutil.rmtree(top, ignore_errors=True)
    with _LIVE_LOCK:
        _LIVE.discard(run_dir)


class DiskStore:
    """Pickled snapshots in ``<storage_dir>/<run_id>/`` (see the module docstring).

    Args:
        storage_dir: the parent directory (created if missing); ``None``: a new temporary one,
            removed on :meth:`close`.
        run_id: the run's name (letters, digits, ``-``, ``_`` and ``.``); ``None``: a unique one.
        background: write on a background thread (default ``True``).
    """

    on_disk = True

    def __init__(self, storage_dir: Any = None, *, run_id: str | None = None, background: bool = True) -> None:
        if run_id is not None and (
            not isinstance(run_id, str) or not run_id or run_id.startswith(".")
            or any(not (c.isalnum() or c in "-_.") for c in run_id)
        ):
            raise ValueError(
                f"Guard: run_id must be a non-empty name of letters, digits, '-', '_' and '.' (not starting "
                f"with '.'), got {run_id!r}"
            )
        self._top: str | None = None
        if storage_dir is None:
            _sweep_stale_temp_dirs()
            self._top = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
            root = self._top
        else:
            root = os.fspath(storage_dir)
            os.makedirs(root, exist_ok=True)
            _sweep_dead_anonymous_runs(root)
        self.run_id = run_id if run_id is not None else f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir = os.path.join(root, self.run_id)
        os.makedirs(self.dir, exist_ok=True)
        try:
            self._lock = _Lock(self.dir)
        except StorageInUse:
            if self._top is not None:
                shutil.rmtree(self._top, ignore_errors=True)
            raise
        for name in os.listdir(self.dir):  # half-written files of a killed process
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(os.path.join(self.dir, name))
        with _LIVE_LOCK:
            _LIVE.add(self.dir)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrkit-guard-io")
        self._background = bool(background)
        self._pending: list[Future] = []
        self._doomed: list[str] = []  # files to delete after the next manifest
        self._serial = max([_serial_of(n) for n in os.listdir(self.dir)] + [0])
        self._finalizer = weakref.finalize(self, _cleanup, self.dir, self._top, self._lock, self._pool)
        #: receives each state once its file is durable (on the writer thread): nothing reads the
        #: object again (a rollback reads the file), so a trainer may reuse its memory.
        self.on_release: Callable[[Any], None] | None = None

    # ------------------------------------------------------------------ writes (in order, maybe in the background)
    def _submit(self, fn: Any, *args: Any) -> None:
        fut = self._pool.submit(fn, *args)
        self._pending = [f for f in self._pending if not f.done()] + [fut]
        if not self._background:
            fut.result()

    def put(self, state: Any) -> str:
        """Queue ``state`` for writing; returns its file name (the key)."""
        self._serial += 1
        name = f"snap-{self._serial}.pkl"
        path = os.path.join(self.dir, name)
        self._submit(self._write_snapshot, path, state)
        return name

    def _write_snapshot(self, path: str, state: Any) -> None:
        atomic_write(path, lambda fh: pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL))
        release = self.on_release
        if release is not None:
            release(state)

    def drop(self, key: Any) -> None:
        """Forget a snapshot; its file is deleted after the next manifest (which no longer names
        it) is durable, so the manifest on disk never names a deleted file."""
        if isinstance(key, str):
            self._doomed.append(os.path.join(self.dir, key))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Queue the manifest (written after the files queued before it), then the deletions."""
        text = json.dumps(manifest, allow_nan=True).encode()
        self._submit(atomic_write, os.path.join(self.dir, MANIFEST), lambda fh: fh.write(text))
        doomed, self._doomed = self._doomed, []
        for path in doomed:
            self._submit(_remove, path)

    def flush(self) -> None:
        """Wait for every queued write; re-raise the first error."""
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    # ------------------------------------------------------------------ reads
    def get(self, key: Any) -> Any:
        """Load a snapshot; :class:`SnapshotError` naming the file if it is missing or corrupt."""
        self.flush()
        path = os.path.join(self.dir, str(key))
        if not os.path.exists(path):
            raise SnapshotError(f"lrkit guard: snapshot file {path} is missing", path)
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except Exception as exc:  # a truncated or foreign file: any unpickling error
            raise SnapshotError(
                f"lrkit guard: snapshot file {path} is corrupt ({type(exc).__name__}: {exc})", path
            ) from exc

    @staticmethod
    def read_manifest(storage_dir: Any, run_id: str) -> dict[str, Any] | None:
        """The manifest of ``run_id`` under ``storage_dir`` (``None`` if there is none)."""
        path = os.path.join(os.fspath(storage_dir), run_id, MANIFEST)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            try:
                return json.load(fh)
            except json.JSONDecodeError as exc:  # cannot happen with atomic writes; say so if it does
                raise SnapshotError(f"lrkit guard: manifest {path} is corrupt ({exc})", path) from exc

    def manifest(self) -> dict[str, Any] | None:
        self.flush()
        return DiskStore.read_manifest(os.path.dirname(self.dir), self.run_id)

    def close(self) -> None:
        """Finish pending writes, release the lock and remove the run's directory."""
        self._finalizer()


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _serial_of(name: str) -> int:
    if name.startswith("snap-") and name.endswith(".pkl"):
        try:
            return int(name[5:-4])
        except ValueError:
            return 0
    return 0
