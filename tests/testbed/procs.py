"""Small process helpers shared by the test bed's servers: free ports, daemons, pid files, waits."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class TestbedError(RuntimeError):
    """A test bed component is missing or did not come up; the message says which and why."""

    __test__ = False


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it; a tiny race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


_PR_SET_PDEATHSIG = 1
# Resolved here, not in the forked child: a dlopen there could deadlock on a lock that some
# other thread of the parent held at fork time.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the parent goes away.

    For servers a pytest session owns, so that a killed or crashed session cannot leave
    apiservers and etcds running in the background forever.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Daemon:
    """A background server whose stdout/stderr go to a log file and whose pid goes to a file.

    The process gets its own session so that a Ctrl-C in the terminal does not hit it
    directly; with `die_with_parent=False` it also outlives its starter (`make cluster`).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        pidfile: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.log = log
        self.pidfile = pidfile
        log.parent.mkdir(parents=True, exist_ok=True)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=cwd,
                preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
            )
        pidfile.write_text(f"{self.proc.pid}\n")

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise TestbedError(
                f"{self.name} exited with status {code}; last lines of {self.log}:\n{log_tail(self.log)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.proc.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)
        self.pidfile.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child that was never reaped) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; only ever the one pid we started."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def read_pid(pidfile: Path, binary: str) -> int | None:
    """The pid in `pidfile` if that process is alive and still runs `binary` (pids get reused)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if Path(cmdline).name == Path(binary).name and pid_alive(pid) else None


def wait_for(
    what: str, probe: Callable[[], bool], timeout: float, alive: Sequence[Daemon] = (), interval: float = 0.2
) -> None:
    """Poll `probe` until it returns True; fail fast if a daemon we depend on has died."""
    deadline = time.monotonic() + timeout
    while True:
        for daemon in alive:
            daemon.check_alive()
        with contextlib.suppress(Exception):  # a probe error just means "not yet"
            if probe():
                return
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class LoopbackServer:
    """A server process on a loopback port (`port`, or a free one) that answers a readiness probe:
    the storage emulators' shared start, wait and stop. A subclass builds its command line from
    `self.port`, calls `_start`, and says in `_responds` when the server is up."""

    def __init__(self, port: int | None) -> None:
        self.port = port or free_port()

    def _start(self, name: str, argv: Sequence[str], workdir: Path, *, timeout: float = 30, **daemon: Any) -> None:
        """Run `argv` with its log and pid file in `workdir` (`<name>.log`, `<name>.pid`) and wait
        until `_responds()`."""
        self._daemon = Daemon(Path(argv[0]).name, argv, workdir / f"{name}.log", workdir / f"{name}.pid", **daemon)
        wait_for(name, self._responds, timeout=timeout, alive=[self._daemon])

    def _responds(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        self._daemon.stop()


def serve(server: LoopbackServer, banner: str) -> None:
    """A `make -f Makefile.testbed <emulator>` target: announce the server, keep it until Ctrl-C."""
    print(banner, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
