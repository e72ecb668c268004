"""`smi scheduler`: run each sweep on its interval, in one process at a time.

Every machine may run a scheduler; one holds the lock and runs the
sweeps, the others wait on standby and take over when it stops. On
PostgreSQL the lock is a session-level advisory lock on a connection of
its own, which the server releases when that connection ends, so a
killed or partitioned scheduler loses it without any timeout to tune. On
SQLite, where every process is on one machine, it is an flock() on a file
in the data folder, which the kernel releases when the process dies.

The sweeps are safe to run twice, so the lock keeps the database from
doing the same work twice rather than guarding correctness.
"""

import fcntl
import logging
import signal
import threading
import time
import zlib
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, connections

from sellmyimages.maintenance import sweeps

logger = logging.getLogger(__name__)

# pg_try_advisory_lock takes a bigint; a fixed number derived from a name
# keeps it readable in pg_locks. Advisory locks are per database, so two
# shops on one PostgreSQL server, each with its own database, do not collide.
ADVISORY_LOCK_KEY = zlib.crc32(b"sellmyimages.scheduler")


class PostgresAdvisoryLock:
    """The scheduler lock on PostgreSQL, held by a dedicated connection."""

    def __init__(self, alias="default"):
        self.alias = alias
        self.wrapper = None

    def acquire(self):
        """Try once to take the lock; return True if this process holds it."""
        self.release()
        wrapper = connections.create_connection(self.alias)
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
                acquired = cursor.fetchone()[0]
        except DatabaseError:
            wrapper.close()
            raise
        if not acquired:
            wrapper.close()
            return False
        self.wrapper = wrapper
        return True

    def is_held(self):
        """Return True while the lock's connection is alive, so the lock is ours."""
        if self.wrapper is None:
            return False
        try:
            with self.wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError:
            self.release()
            return False
        return True

    def release(self):
        if self.wrapper is None:
            return
        try:
            # Closing the session releases the lock on the server.
            self.wrapper.close()
        except DatabaseError:
            pass
        self.wrapper = None


class FileLock:
    """The scheduler lock for SQLite installations: flock() on a data-folder file."""

    def __init__(self, path):
        self.path = Path(path)
        self.handle = None

    def acquire(self):
        if self.handle is not None:
            return True
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self.handle = handle
        return True

    def is_held(self):
        return self.handle is not None

    def release(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def scheduler_lock():
    """Return the lock that suits the configured database."""
    if connection.vendor == "postgresql":
        return PostgresAdvisoryLock()
    if connection.vendor == "sqlite":
        return FileLock(Path(settings.DATA_DIR) / "scheduler.lock")
    raise NotImplementedError(
        f"The scheduler has no lock for the {connection.vendor!r} database; "
        "use PostgreSQL or SQLite."
    )


class Scheduler:
    """Run each sweep every `intervals[name]` seconds while holding the lock."""

    def __init__(self, lock, *, intervals=None, standby_seconds=5.0, tick_seconds=1.0):
        self.lock = lock
        self.intervals = dict(intervals or settings.SMI_SWEEP_INTERVALS)
        unknown = set(self.intervals) - set(sweeps.SWEEPS)
        if unknown:
            raise ValueError(f"intervals name unknown sweeps {sorted(unknown)!r}.")
        self.standby_seconds = standby_seconds
        self.tick_seconds = tick_seconds
        self.stopping = threading.Event()
        self.next_run = {}

    def stop(self, signum=None, frame=None):
        if signum is not None:
            logger.info("event=scheduler_stopping signal=%s", signal.Signals(signum).name)
        self.stopping.set()

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self):
        """Hold the lock and run sweeps until stop() is called."""
        holding = False
        logger.info("event=scheduler_started intervals=%s", self.intervals)
        try:
            while not self.stopping.is_set():
                if not holding:
                    holding = self.try_to_lead()
                    if not holding:
                        self.stopping.wait(self.standby_seconds)
                        continue
                if not self.lock.is_held():
                    logger.warning("event=scheduler_lock_lost")
                    holding = False
                    continue
                self.run_due_sweeps()
                self.stopping.wait(self.tick_seconds)
        finally:
            self.lock.release()
            connection.close()
            logger.info("event=scheduler_stopped")

    def try_to_lead(self):
        try:
            acquired = self.lock.acquire()
        except DatabaseError as exc:
            logger.warning("event=scheduler_lock_failed error=%s", exc)
            return False
        if acquired:
            logger.info("event=scheduler_lock_acquired")
            # A new leader runs every sweep at once: the previous one may
            # have died just before its turn.
            self.next_run = {}
        return acquired

    def run_due_sweeps(self):
        for name, interval in self.intervals.items():
            if self.stopping.is_set():
                return
            now = time.monotonic()
            if self.next_run.get(name, 0) > now:
                continue
            self.next_run[name] = now + interval
            try:
                sweeps.run_sweep(name)
            except Exception:  # the scheduler outlives one sweep's failure
                logger.exception("event=sweep_failed sweep=%s", name)
                # A broken connection is reopened on the next query.
                connection.close()
