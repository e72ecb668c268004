"""Real shop processes for the crash and scale-out tests: workers, schedulers, servers.

Every process is started in its own session, so a SIGKILL to its process
group takes its children (Celery's pool processes) with it, as a machine
or container that dies would. ShopProcesses.stop_all() and the servers'
stop() run from fixtures' finally blocks, so nothing outlives a test.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout, message, interval=0.2):
    """Call `check` until it returns something true; raise AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(message)


def shop_environment(settings, database_url, **extra):
    """Return the environment that points child processes at this test's data."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SMI_", "DJANGO_", "DATABASE_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "sellmyimages.settings",
            "DATABASE_URL": database_url,
            "SMI_DATA_DIR": str(settings.DATA_DIR),
            "SMI_CATALOG_DIR": str(settings.SMI_CATALOG_DIR),
            "SMI_OUTBOX_DIR": str(settings.SMI_OUTBOX_DIR),
            "SMI_PUBLIC_BASE_URL": "http://testserver",
            "SMI_SECRET_KEY": "test-secret-key-for-child-processes",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def database_url(settings_dict, **overrides):
    """Return a postgres:// URL for a Django settings_dict, such as the test database's."""
    values = {
        "USER": settings_dict["USER"] or "postgres",
        "HOST": settings_dict["HOST"] or "127.0.0.1",
        "PORT": settings_dict["PORT"] or 5432,
        "NAME": settings_dict["NAME"],
    }
    values.update(overrides)
    return "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**values)


class ShopProcesses:
    """Start, kill and restart `smi` subprocesses; keep their logs in one folder."""

    def __init__(self, env, log_dir):
        self.env = env
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes = {}
        self.started = 0
        self.kills = 0

    def start(self, name, *args, module="sellmyimages.cli"):
        self.started += 1
        log = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = (process, args, module)
        return process

    def kill(self, name):
        """SIGKILL a process and everything it started."""
        process = self.processes[name][0]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        self.kills += 1

    def restart(self, name):
        _process, args, module = self.processes[name]
        return self.start(name, *args, module=module)

    def kill_random(self, names, rng):
        name = rng.choice(names)
        self.kill(name)
        self.restart(name)
        return name

    def terminate(self, name, timeout=60):
        """SIGTERM a process and return its exit code once it has stopped."""
        process = self.processes[name][0]
        os.killpg(process.pid, signal.SIGTERM)
        return process.wait(timeout=timeout)

    def stop_all(self):
        for process, _args, _module in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for process, _args, _module in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def logs(self):
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster on a free loopback port, safe to restart."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="smi-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        shutil.chown(self.root, "postgres", "postgres")
        self.as_postgres(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")

    @staticmethod
    def as_postgres(*command):
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, command)],
            check=True,
            capture_output=True,
        )

    def start(self):
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off"
        )
        self.as_postgres(
            PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o", options, "-w", "start"
        )

    def stop(self):
        """Stop at once, dropping every connection, as a crash or a failover does."""
        self.as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def create_database(self, name):
        self.as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", name)

    def url(self, name):
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A throwaway redis-server without persistence: a restart loses every key."""

    def __init__(self, log_dir):
        self.port = free_port()
        self.log_dir = Path(log_dir)
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(self.log_dir / f"redis-{self.port}.log"),
            ],
            start_new_session=True,
        )
        wait_for(self.ping, 10, f"redis-server on port {self.port} did not start")

    def ping(self):
        import redis

        try:
            return redis.Redis(port=self.port, socket_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"


def seeded_random():
    """Return a Random whose seed is printed, so a failing run can be replayed."""
    seed = int(os.environ.get("SMI_CRASH_SEED", random.randrange(1_000_000)))
    print(f"crash test seed: SMI_CRASH_SEED={seed}")
    return random.Random(seed)
