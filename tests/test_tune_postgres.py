"""Two `lrkit tune` worker processes share one study on a real, throwaway PostgreSQL server.

The fixture runs Debian's PostgreSQL (``initdb`` and ``pg_ctl`` from ``pg_config --bindir`` or
``/usr/lib/postgresql/*/bin``) on a free local port in a temporary directory, as the ``postgres``
system user when the tests run as root (``initdb`` refuses root), with trust authentication on
127.0.0.1 only, and stops it afterwards. The test skips, saying why, only when no server binaries
are installed (CI installs the ``postgresql`` package, best effort, in ``.ci/run``).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg 3, SQLAlchemy's default) is not installed: "
                    "pip install 'lrkit[tune]'")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _bindir() -> Path | None:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            runuser = None
        if runuser is None:
            pytest.skip("running as root without a 'postgres' user and runuser to start the server as")
        as_user = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="lrkit-pg-"))
    data = root / "data"
    if as_user:
        shutil.chown(root, "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    out = run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {out.stderr[-1000:]}")
    opts = f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off -c max_connections=50"
    out = run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    if out.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {out.stderr[-500:]} {log[-1000:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _worker(url: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lrkit", "tune", "--storage", url, "--study", "shared",
                             "--strategy", "log", "--low", "1e-5", "--high", "1.0", "--trials", "6",
                             "--train-steps", "600", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(postgres_url):
    # trials of 600 steps (a few seconds each): long enough that the second worker, still importing
    # torch when the first starts, finds trials left to run even on a loaded machine
    procs = [_worker(postgres_url), _worker(postgres_url)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    workers = {t.user_attrs["lrkit_worker"] for t in finished}
    assert len(workers) == 2  # both processes ran trials of the same study
    lrs = sorted(t.params["lr"] for t in finished)
    # every grid point ran; each worker stops once the study has 6 finished trials, so the other
    # one may just have started a 7th (Optuna's GridSampler then repeats a point)
    assert sorted(set(lrs)) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]) and 6 <= len(lrs) <= 7
    results = [json.loads(out) for out, _ in outs]
    assert results[0]["best_lr"] in lrs and {r["storage"] for r in results} == {postgres_url}


def test_a_worker_that_loses_the_race_to_create_the_tables_finds_them(postgres_url):
    """Optuna creates its tables on first use, so workers started together on a fresh database race
    to create them. Made deterministic here: another connection has created them in a transaction
    not yet committed, so the worker's check sees no table and its CREATE waits; when the other
    commits, the worker's CREATE fails ("relation ... already exists" or a unique violation on a
    type) -- it must open the storage the winner made, not stop."""
    import sqlalchemy
    from optuna.storages._rdb import models

    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text("DROP DATABASE IF EXISTS race"))
        c.execute(sqlalchemy.text("CREATE DATABASE race"))
    admin.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/race"
    winner = sqlalchemy.create_engine(url)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; from lrkit.tune.storage import open_storage; open_storage(sys.argv[1]); print('opened')"
    with winner.connect() as conn:
        tx = conn.begin()
        models.BaseModel.metadata.create_all(conn)  # the winner's tables, not committed yet
        worker = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(6.0)  # the worker imports, finds no table, and its CREATE waits on the winner's lock
        tx.commit()
    out, err = worker.communicate(timeout=120)
    winner.dispose()
    assert worker.returncode == 0 and "opened" in out, err[-1500:]


def test_wrong_direction_and_bad_database_on_postgresql(postgres_url):
    optuna.create_study(storage=postgres_url, study_name="acc", direction="maximize")
    p = _worker(postgres_url.rsplit("/", 1)[0] + "/no_such_db")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "cannot be reached" in err and 'database "no_such_db" does not exist' in err
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-m", "lrkit", "tune", "--storage", postgres_url, "--study", "acc",
                        "--trials", "1", "--train-steps", "10"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "exists with direction=maximize" in r.stderr
