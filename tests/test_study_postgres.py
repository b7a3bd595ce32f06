"""The 3-worker sweep with one worker killed (kill -9), bookkept on a PostgreSQL server the test starts.

The server is a throw-away cluster in a temp folder (``initdb``, ``pg_ctl``), listening on a free
loopback port, with trust authentication; it is stopped in the fixture's teardown whatever happens.
The test skips, saying why, where the server binaries or the ``psycopg2`` driver (the ``postgres``
extra) are missing. Trials are read back with psycopg2 directly, not through the code under test.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from li2_lightning.sweep import Sweep, run_sweep
from test_study import TINY, _rows, _same_rows, _write, kill_one_of_three_workers, trials_from_rows
from train_subprocess import free_port


def _pg_bin() -> str | None:
    """The folder holding initdb, pg_ctl and createdb: Debian's /usr/lib/postgresql/<version>/bin, or PATH."""
    tools = ("initdb", "pg_ctl", "createdb")
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all(os.path.isfile(os.path.join(folder, t)) for t in tools):
            return folder
    found = [shutil.which(t) for t in tools]
    if all(found) and len({os.path.dirname(f) for f in found}) == 1:
        return os.path.dirname(found[0])
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL server and database for one test; yields its SQLAlchemy URL."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, createdb) not found on PATH or under "
                    "/usr/lib/postgresql/*/bin; install the `postgresql` package to run this test")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver is missing: pip install 'li2-lightning[postgres]'")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
    # not under pytest's tmp_path: its folders are 0700 root, which the server user cannot enter
    root = tempfile.mkdtemp(prefix="li2-pg-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "data")
    os.mkdir(data, 0o700)
    if os.geteuid() == 0:
        os.chown(data, user.pw_uid, user.pw_gid)
        os.chown(root, user.pw_uid, user.pw_gid)
    port = free_port()
    log = os.path.join(root, "server.log")
    pg_ctl = [os.path.join(bin_dir, "pg_ctl"), "-D", data]
    started = False
    try:
        subprocess.run(_as_server_user([os.path.join(bin_dir, "initdb"), "-D", data, "-U", "li2", "--auth=trust",
                                        "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_server_user([*pg_ctl, "-l", log, "-w", "-t", "60", "-o",
                                        f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50",
                                        "start"]), check=True, capture_output=True, timeout=90)
        started = True
        subprocess.run([os.path.join(bin_dir, "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "li2", "sweep"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://li2@127.0.0.1:{port}/sweep"
    except subprocess.CalledProcessError as err:
        tail = open(log).read()[-2000:] if os.path.isfile(log) else ""
        raise RuntimeError(f"{err.cmd} failed: {err.stderr.decode()[-2000:]} {tail}") from err
    finally:
        if started:
            subprocess.run(_as_server_user([*pg_ctl, "-m", "immediate", "-w", "-t", "60", "stop"]),
                           capture_output=True, timeout=90)
        shutil.rmtree(root, ignore_errors=True)


def _trials(url):
    """(state, point_id, worker) of every trial, read with psycopg2 from Optuna's tables."""
    import psycopg2

    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT t.trial_id, t.state::text, a.key, a.value_json FROM trials t "
                        "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                        "AND a.key IN ('point_id', 'worker')")
            rows = cur.fetchall()
    except psycopg2.errors.UndefinedTable:  # the first worker has not created the tables yet
        return []
    finally:
        con.close()
    return trials_from_rows(rows)


@pytest.mark.slow  # three processes training 60 points next to each other: 60-120 s on 2 shared cores
def test_three_workers_on_postgres_one_killed_every_point_once_equal_to_one_worker(tmp_path, postgres_url):
    path = _write(tmp_path / "multi", TINY)
    kill_one_of_three_workers(path, lambda: _trials(postgres_url), ("--storage", postgres_url), wait=120)

    multi = tmp_path / "multi" / "s.jsonl"
    Sweep(path, storage=postgres_url).export(multi)
    one = _write(tmp_path / "one", TINY)
    run_sweep(one, progress=False)  # the reference: one worker on the default SQLite store
    _same_rows(_rows(multi), _rows(tmp_path / "one" / "s.jsonl"))
