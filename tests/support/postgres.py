"""A PostgreSQL server of the tests' own: `initdb` in a temporary folder, a loopback port, stopped
by its PID (and frozen, `frozen()`, by the PIDs of its processes; shut down and started again on
the same port and data, `shut_down()` and `start_again()`). Debian's server binaries
(`apt-get install postgresql`, under /usr/lib/postgresql/N/bin) or `initdb` on PATH;
`postgres_binaries()` is None without them.

initdb refuses to run as root, so as root the cluster belongs to `nobody` (its folder too).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "svcfp"
UNPRIVILEGED = "nobody"


def with_password(url: str) -> str:
    """`url` with a password in it (the tests' server trusts local users and ignores it), to
    check that messages leave it out."""
    return url.replace(f"://{SUPERUSER}@", f"://{SUPERUSER}:secret@")


def postgres_binaries() -> Path | None:
    """The folder holding `initdb` and `postgres`: from PATH, else Debian's newest. A link on
    PATH is followed to the real program: the unprivileged cluster owner must be able to run it,
    and a link may live in a folder only root can enter."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """One running cluster on 127.0.0.1:`port`, trusting local connections of `SUPERUSER`."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    names: Iterator[int]
    binaries: Path
    user: str | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self.names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The whole server stopped (SIGSTOP) for the block, then continued: it answers nothing,
        as a hung machine would. Every backend is a process of its own in a session of its own,
        so each of the postmaster's children is stopped by its PID."""
        stopped = [self.process.pid, *_children(self.process.pid)]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def shut_down(self) -> None:
        """Fast shutdown (SIGINT to its PID) of the server we started; its data stays."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def start_again(self) -> None:
        """The server shut down started anew on its port and data; raises RuntimeError with its
        log if it does not answer."""
        assert self.process.poll() is not None, "the server still runs"
        self.process = _launch(self.binaries, self.root, self.port, self.user)
        if not _wait_ready(self):
            raise RuntimeError(f"the PostgreSQL server did not start again:\n{self.log()}")

    def stop(self) -> None:
        """Fast shutdown of the server, then remove its folder."""
        self.shut_down()
        shutil.rmtree(self.root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The PIDs of the processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent is the 2nd field after the command name, which is in parentheses.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def start_server(binaries: Path) -> PostgresServer:
    """initdb and start a throwaway cluster; raises RuntimeError with the server's log."""
    root = Path(tempfile.mkdtemp(prefix="svcfp-pg-"))
    user: str | None = None
    if os.geteuid() == 0:
        user = UNPRIVILEGED
        owner = pwd.getpwnam(user)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    try:
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=user,
            cwd=root,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    for _attempt in range(3):
        port = _free_port()
        process = _launch(binaries, root, port, user)
        server = PostgresServer(root, port, process, itertools.count(), binaries, user)
        if _wait_ready(server):
            return server
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    log_text = server.log()
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"the PostgreSQL server did not start:\n{log_text}")


def _launch(binaries: Path, root: Path, port: int, user: str | None) -> subprocess.Popen[bytes]:
    """The postmaster of the cluster under `root` on 127.0.0.1:`port`, logging to its folder."""
    with (root / "server.log").open("ab") as log:
        return subprocess.Popen(
            [
                str(binaries / "postgres"),
                "-D",
                str(root / "data"),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                str(root),
                # A test cluster: durability is not the point, memory and speed are.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_connections=40",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            cwd=root,
            start_new_session=True,
        )


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> bool:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with contextlib.suppress(psycopg.OperationalError):
            psycopg.connect(server.url(), connect_timeout=2).close()
            return True
        time.sleep(0.2)
    return False
