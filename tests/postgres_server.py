"""A throwaway PostgreSQL cluster (Debian's ``postgresql`` package) on 127.0.0.1 and a free port.

``initdb`` refuses to run as root, so as root the cluster belongs to ``nobody``. Clients log in
as ``routegate`` with a password over TCP (scram-sha-256), so tests can check that it never leaks.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fake_upstream import free_port
from tests.tools import missing

USER = "routegate"
PASSWORD = "pg-secret-password-4242"
HINT = "PostgreSQL is not installed: apt-get install postgresql (`make test` does it as root)"


def postgres_bindir() -> Path:
    """The directory of ``initdb``/``pg_ctl``; fail under CI, skip elsewhere, when missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    missing(HINT)


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_postgres() -> Iterator[str]:
    """Start a cluster; yield its ``postgresql://`` URL (with the password); remove it on exit."""
    bindir = postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="routegate-pg-"))
    data = root / "data"
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
        shutil.chown(pwfile, "nobody")
    port = free_port()
    log = root / "postgres.log"
    subprocess.run(
        _as_owner(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = subprocess.run(
        _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]),
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}\n{log.read_text(errors='replace')}")
    try:
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway cluster's URL, for the tests of one module (import the fixture there)."""
    with running_postgres() as url:
        yield url
