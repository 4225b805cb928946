"""Running a routegate command as another user than root: what a user without root's rights gets."""

from __future__ import annotations

import os
import select
import signal

from server.cli import main


def said_as_another_user(argv: list[str], timeout: float = 60) -> str:
    """How ``routegate argv`` ends in a forked child, as ``nobody`` (no extra groups) when this
    process is root: the message it stops with, or the exception's name. (A subprocess cannot
    run as ``nobody`` here: the interpreter lives in root's home.)"""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's result reaches the parent through the pipe
        said = "no result"
        try:
            os.close(reader)
            if os.geteuid() == 0:
                import pwd

                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            main(argv)
            said = "finished"
        except SystemExit as stop:
            said = str(stop)
        except BaseException as error:  # noqa: BLE001 - a traceback is what the test looks for
            said = type(error).__name__
        finally:
            try:
                os.write(writer, said.encode())
            finally:
                os._exit(0)  # never back into pytest
    os.close(writer)
    try:
        if not select.select([reader], [], [], timeout)[0]:
            os.kill(child, signal.SIGKILL)
            raise AssertionError(f"routegate {' '.join(argv)} did not end within {timeout} s")
        said = b""
        while chunk := os.read(reader, 65536):
            said += chunk
        return said.decode()
    finally:
        os.close(reader)
        os.waitpid(child, 0)
