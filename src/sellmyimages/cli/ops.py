"""`smi worker`, `smi scheduler` and `smi sweep`: the shop's background processes."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import click

from sellmyimages.cli import fail, main, setup_django

logger = logging.getLogger("sellmyimages.cli.ops")

DATABASE_BACKEND = "django_tasks_db.DatabaseBackend"
CELERY_BACKEND = "django_tasks_celery.CeleryBackend"
# Seconds a database worker waits after losing the database, doubling up to the maximum.
RECONNECT_FIRST_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 30.0
# Set in the environment of the worker processes that a supervisor starts.
SUPERVISED_ENV = "SMI_WORKER_SUPERVISED"


def task_backend():
    from django.conf import settings

    return settings.TASKS["default"]["BACKEND"]


@main.command()
@click.option(
    "--concurrency",
    "-c",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Tasks run at the same time, each in its own process.",
)
@click.option(
    "--queue",
    default="*",
    show_default=True,
    help="Queue names, comma-separated; * means every queue.",
)
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between polls of an empty queue (database backend).",
)
@click.option("--batch", is_flag=True, help="Run every ready task, then exit (database backend).")
@click.option(
    "--max-tasks",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after this many tasks (database backend).",
)
def worker(concurrency, queue, interval, batch, max_tasks):
    """Run background tasks: upscaling, emails, refunds."""
    setup_django()
    backend = task_backend()
    supervised = os.environ.get(SUPERVISED_ENV) == "1"
    if backend == CELERY_BACKEND:
        if batch or max_tasks is not None:
            fail("--batch and --max-tasks work only with the database task backend.")
        if supervised:
            run_celery_worker(concurrency, queue)
            return
        # A Celery worker may stop on its own, for example after giving up
        # on the broker, so a supervisor starts it again.
        child_args = ["--concurrency", str(concurrency), "--queue", queue]
        sys.exit(supervise_workers(1, child_args, restart_clean_exits=True))
    elif backend == DATABASE_BACKEND:
        if concurrency == 1:
            run_database_worker(queue, interval, batch, max_tasks)
            return
        child_args = ["--concurrency", "1", "--queue", queue, "--interval", str(interval)]
        if batch:
            child_args.append("--batch")
        if max_tasks is not None:
            child_args += ["--max-tasks", str(max_tasks)]
        sys.exit(supervise_workers(concurrency, child_args, restart_clean_exits=not batch))
    else:
        fail(f"SMI_TASK_BACKEND={backend!r} has no worker here; use 'database' or 'celery'.")


def worker_id():
    # django-tasks-db limits worker ids to 64 characters.
    return f"{socket.gethostname()[:40]}-{os.getpid()}"


def run_database_worker(queue, interval, batch, max_tasks):
    """Run django-tasks-db's worker loop, reconnecting when the database goes away.

    django-tasks-db's loop stops on a database error outside a task. The
    task that was running then stays claimed in its table, but the job's
    own state shows the recovery sweep what to enqueue again.
    """
    from django.db import InterfaceError, OperationalError, connections
    from django_tasks_db.management.commands.db_worker import Worker

    worker = Worker(
        queue_names=queue.split(","),
        interval=interval,
        batch=batch,
        backend_name="default",
        startup_delay=not batch,
        max_tasks=max_tasks,
        worker_id=worker_id(),
        excluded_queue_names=[],
    )
    worker.configure_signals()

    def stop_after_task(signum, frame):
        # A supervisor and a signal to the whole process group may both send
        # SIGTERM; a repeat must not abandon the running task as a second
        # Ctrl+C (SIGINT) does.
        if worker.running:
            worker.shutdown(signum, frame)

    signal.signal(signal.SIGTERM, stop_after_task)
    logger.info("event=worker_started backend=database worker_id=%s queue=%s", worker.worker_id, queue)
    delay = RECONNECT_FIRST_SECONDS
    while True:
        try:
            worker.run()
            return
        except (OperationalError, InterfaceError) as exc:
            if not worker.running:
                return
            logger.warning(
                "event=worker_database_error worker_id=%s retry_in_seconds=%.0f error=%s",
                worker.worker_id,
                delay,
                exc,
            )
            connections.close_all()
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)


def this_program():
    """Return the command that started this process, without its arguments."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None:
        # Started with `python -m MODULE`.
        return [sys.executable, "-m", spec.name.removesuffix(".__main__")]
    return [sys.executable, sys.argv[0]]


def supervise_workers(count, child_args, *, restart_clean_exits):
    """Run `count` worker processes, restarting any that stops; return an exit code.

    SIGTERM and SIGINT are passed on, and each worker finishes its current
    task before it exits. The workers run the same program as this process,
    so a wrapper such as a test's slowed engine applies to them too.
    """
    command = [*this_program(), "worker", *child_args]
    env = {**os.environ, SUPERVISED_ENV: "1"}
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for process in children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    children = [subprocess.Popen(command, env=env) for _ in range(count)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("event=worker_supervisor_started count=%d", count)
    while True:
        time.sleep(0.5)
        for index, process in enumerate(children):
            code = process.poll()
            if code is None or stopping:
                continue
            if code == 0 and not restart_clean_exits:
                continue
            logger.warning("event=worker_exited pid=%d exit_code=%d restarting=1", process.pid, code)
            time.sleep(RECONNECT_FIRST_SECONDS)
            children[index] = subprocess.Popen(command, env=env)
        if all(process.poll() is not None for process in children):
            codes = [process.returncode for process in children]
            if stopping:
                # A worker still starting up when SIGTERM came dies of it,
                # which is a clean stop too.
                return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
            if not restart_clean_exits:
                return max(abs(code) for code in codes)


def run_celery_worker(concurrency, queue):
    """Run a Celery worker with `concurrency` prefork processes."""
    from sellmyimages.celery_app import app, import_task_modules

    import_task_modules()
    # Every task is on Celery's default queue unless it names another.
    queues = app.conf.task_default_queue if queue == "*" else queue
    logger.info("event=worker_started backend=celery concurrency=%d queues=%s", concurrency, queues)
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={queues}",
            f"--hostname=smi-{os.getpid()}@{socket.gethostname()}",
            "--loglevel=INFO",
            # Fair dispatch sends a task only to a process that is free.
            "--optimization=fair",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@main.command()
@click.option(
    "--standby-interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between tries to take the lock while another scheduler holds it.",
)
def scheduler(standby_interval):
    """Run the maintenance sweeps on their intervals; one scheduler at a time leads."""
    setup_django()
    from sellmyimages.maintenance.scheduler import Scheduler, scheduler_lock

    runner = Scheduler(scheduler_lock(), standby_seconds=standby_interval)
    runner.install_signal_handlers()
    runner.run()


@main.command()
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["abandon", "recover", "poll", "remind", "cleanup"]),
    help="Run only this sweep; repeat for several.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def sweep(only, as_json):
    """Run every maintenance sweep once, now, and print what each did."""
    setup_django()
    from sellmyimages.maintenance.sweeps import SWEEPS, run_sweep

    reports = [run_sweep(name) for name in (only or SWEEPS)]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"sweep": r.name, "seconds": round(r.seconds, 3), "counts": r.counts}
                    for r in reports
                ],
                indent=2,
            )
        )
        return
    for report in reports:
        click.echo(f"{report.name:<8} {report.seconds:7.3f} s  {report.summary()}")


def start_background_processes(task_workers, *, with_scheduler):
    """Start the task workers and the scheduler beside `smi serve`; return the processes."""
    base = [sys.executable, "-m", "sellmyimages.cli"]
    processes = []
    if task_workers:
        processes.append(subprocess.Popen([*base, "worker", "--concurrency", str(task_workers)]))
    if with_scheduler:
        processes.append(subprocess.Popen([*base, "scheduler"]))
    return processes
