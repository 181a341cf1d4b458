"""A throwaway PostgreSQL server for the fault soak: its own data folder, its own port.

Made with `initdb` and run with `pg_ctl`, so the soak can restart it at will and
never touches a shared server. PostgreSQL refuses to run as root: as root, the
binaries run as the `postgres` user through `runuser`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_bindir() -> Path | None:
    """The newest PostgreSQL's binaries folder (Debian's layout, or `pg_ctl` on PATH)."""
    candidates = sorted(
        Path("/").glob(POSTGRES_BIN_GLOB.lstrip("/")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    for folder in reversed(candidates):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PostgresInstance:
    """One private PostgreSQL server in `folder`, listening on 127.0.0.1:`port`."""

    def __init__(self, folder: Path, port: int, bindir: Path) -> None:
        self.folder = folder
        self.port = port
        self.bindir = bindir
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self._as_user: list[str] = []
        #: (uid, gid) of the `postgres` user when the soak runs as root.
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
            self._owner = (user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        """The URL of the `postgres` database (trust authentication, loopback only)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self._as_user, *command], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {done.stderr.strip()}")

    def create(self) -> None:
        """initdb a new cluster (owner `postgres`, trust on loopback, no fsync: a soak).

        Without fsync a commit still reaches the kernel before it is acknowledged,
        so it survives the server's crash (the soak's restart), though not the
        machine's. Commits stay synchronous: an asynchronous commit acknowledged
        and then lost in the crash would make the ledger forget a sent email.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            os.chown(self.folder, *self._owner)
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata", str(self.data), "--username", "postgres",
            "--auth", "trust", "--encoding", "UTF8", "--no-sync",
        )  # fmt: skip
        if self._owner is not None:
            self.log.touch()
            os.chown(self.log, *self._owner)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "start", "--pgdata", str(self.data), "--log", str(self.log),
            "--wait", "--timeout", "60", "--options", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: clean; `immediate`: as if it crashed)."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "stop", "--pgdata", str(self.data), "--mode", mode, "--wait", "--timeout", "60",
        )  # fmt: skip

    def running(self) -> bool:
        """Whether the server's postmaster is up."""
        return (self.data / "postmaster.pid").exists()

    def restart(self, down_seconds: float) -> None:
        """Crash-stop the server, keep it down `down_seconds`, start it again (with recovery)."""
        self.stop("immediate")
        time.sleep(down_seconds)
        self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if self.running():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pid = (self.data / "postmaster.pid").read_text().split()[0]
                os.kill(int(pid), 9)
        shutil.rmtree(self.folder, ignore_errors=True)
