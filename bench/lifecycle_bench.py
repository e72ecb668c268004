"""Push N jobs through the whole lifecycle; compare with no-op task chains on the same engine.

    .venv/bin/python bench/lifecycle_bench.py [--jobs 200] [--workers 1,2,4]

For each worker count W the script starts W `smi worker` processes
(bench/bench_worker.py: the real worker, with an upscaler that copies a
prepared output at once) on a fresh PostgreSQL database and Redis database
6, and measures in the same run:

- baseline: N chains of two no-op tasks (bench/noop_tasks.py), all enqueued
  at once, on Celery, the engine the shop uses to scale out; two tasks per
  chain match a job's two queued steps (upscale, delivery email);
- lifecycle: N jobs, each paid (which enqueues its processing), upscaled,
  completed and emailed its download link, timed from the first payment
  to the last email.

It prints jobs per second, worker-milliseconds per job for both, and their
ratio; the gap is the shop's own overhead per job (row locks, audit events,
the email, the file copy). The goal is a ratio under 2.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
IMAGE = REPO.parent / "shared" / "testdata" / "images" / "photo_cat_chelsea_451x300.png"


def recreate_database(url):
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def configure_environment(options, data_dir):
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "sellmyimages.settings",
            "DATABASE_URL": options.database_url,
            "SMI_DATA_DIR": str(data_dir),
            "SMI_TASK_BACKEND": "celery",
            "SMI_REDIS_URL": options.redis_url,
            "SMI_REDIS_KEY_PREFIX": "smi-bench:",
            "SMI_PUBLIC_BASE_URL": "http://127.0.0.1:8000",
            "SMI_LOG_LEVEL": "WARNING",
            # Workers keep their database connection, as docs/operations.md advises.
            "SMI_DB_CONN_MAX_AGE": "60",
            "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO / "src")]),
        }
    )
    sys.path.insert(0, str(BENCH))


def prepare_output(data_dir):
    """Upscale the sample once; the bench workers copy this file for every job."""
    from sellmyimages.upscaling import engine

    result = engine.upscale_file(IMAGE, data_dir / "prepared.png", 4)
    os.environ["SMI_BENCH_OUTPUT"] = json.dumps(
        {
            "path": str(result.path),
            "width": result.width,
            "height": result.height,
            "size_bytes": result.size_bytes,
            "sha256": result.sha256,
        }
    )


def start_workers(count):
    command = [sys.executable, str(BENCH / "bench_worker.py"), "worker"]
    log = open(os.environ.get("SMI_BENCH_WORKER_LOG", os.devnull), "ab")
    return [
        subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(count)
    ]


def stop_workers(workers):
    for process in workers:
        os.killpg(process.pid, signal.SIGTERM)
    for process in workers:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(check, timeout=600):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the benchmark did not finish within {timeout} s")
        time.sleep(0.02)


def run_chains(count, steps):
    """Enqueue `count` no-op chains of `steps` tasks on Celery; return the seconds until all ran."""
    import noop_tasks

    client = noop_tasks.counter()
    client.delete(noop_tasks.finished_key())
    started = time.perf_counter()
    for chain in range(count):
        noop_tasks.noop_step.enqueue(chain, steps)
    wait_until(lambda: int(client.get(noop_tasks.finished_key()) or 0) >= count)
    return time.perf_counter() - started


def run_lifecycle(count):
    """Create `count` jobs, pay them all, return the seconds until every email is sent."""
    from sellmyimages.jobs.manager import job_manager
    from sellmyimages.notifications.models import Notification
    from sellmyimages.payments.service import confirm_payment

    jobs = [
        job_manager.create_job(
            resolution="4x",
            source_kind="catalog",
            source_ref="cat.png",
            source_path=str(IMAGE),
            source_width=451,
            source_height=300,
            source_format="PNG",
            email=f"buyer{index}@example.com",
            payment_provider="local",
        )
        for index in range(count)
    ]
    started = time.perf_counter()
    for job in jobs:
        confirm_payment(
            job.job_id,
            payment_intent_id=f"pi_{job.job_id.hex}",
            amount_paid=job.customer_price,
            currency=job.currency,
            actor="bench",
        )
    pks = [job.pk for job in jobs]
    wait_until(
        lambda: Notification.objects.filter(
            job__in=pks, kind="download_ready", sent_at__isnull=False
        ).count()
        == count
    )
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="Jobs (and no-op chains) per run.")
    parser.add_argument("--workers", default="1,2,4", help="Worker counts, comma-separated.")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/smi_bench_lifecycle"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    options = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="smi-bench-"))
    configure_environment(options, data_dir)
    recreate_database(options.database_url)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    prepare_output(data_dir)

    rows = []
    for count in [int(value) for value in options.workers.split(",")]:
        workers = start_workers(count)
        try:
            # Warm up: the workers start, connect and import everything.
            run_chains(count, 2)
            run_lifecycle(count)
            baseline = run_chains(options.jobs, 2)
            lifecycle = run_lifecycle(options.jobs)
        finally:
            stop_workers(workers)
        rows.append((count, baseline, lifecycle))

    jobs = options.jobs
    print(
        f"{jobs} jobs per run on Celery workers with Redis, "
        f"PostgreSQL {options.database_url.rsplit('@', 1)[1]}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        f"{'workers':>7} {'no-op chains/s':>15} {'jobs/s':>8} "
        f"{'no-op ms/chain':>15} {'ms/job':>8} {'overhead ms/job':>16} {'ratio':>6}"
    )
    for count, baseline, lifecycle in rows:
        per_chain = baseline * count / jobs * 1000
        per_job = lifecycle * count / jobs * 1000
        print(
            f"{count:>7} {jobs / baseline:>15.1f} {jobs / lifecycle:>8.1f} "
            f"{per_chain:>15.1f} {per_job:>8.1f} {per_job - per_chain:>16.1f} "
            f"{lifecycle / baseline:>6.2f}"
        )
    print("\nms/job and ms/chain are worker-milliseconds: wall time x workers / jobs.")
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
