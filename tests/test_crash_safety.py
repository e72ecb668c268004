"""Crash safety on PostgreSQL with the database task queue and real worker processes.

Several `smi worker` processes and a `smi scheduler` run a batch of jobs
through the whole lifecycle while the test SIGKILLs workers at random
points. At the end every job must be completed, failed and refunded, or
abandoned, as its input demands, with no email or refund made twice.
The workers run the real local engine, slowed by a second per upscale so
that kills land mid-task (tests/slowed_smi.py).
"""

import collections
import email
import email.policy
import os
import shutil
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from sellmyimages.catalog.images import catalog_path
from sellmyimages.jobs.models import Job, JobEvent
from sellmyimages.notifications.models import Notification
from sellmyimages.payments.models import Refund
from sellmyimages.payments.service import confirm_payment
from tests.conftest import files_in, image_file
from tests.factories import make_job
from tests.processes import (
    PrivatePostgres,
    ShopProcesses,
    database_url,
    seeded_random,
    shop_environment,
    wait_for,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.crash,
]

IMAGE = "photo_cat_chelsea_451x300.png"
BROKEN_SOURCE = "jpeg_truncated_progressive_100x100.jpg"
UNSETTLED = ("awaiting_payment", "pending", "processing")

# Short leases and intervals, so that recovery happens within the test.
FAST_MAINTENANCE = {
    "SMI_PROCESSING_LEASE_SECONDS": 3,
    "SMI_RECOVER_AFTER_SECONDS": 3,
    "SMI_MAX_PROCESSING_RECOVERIES": 100,
    "SMI_SWEEP_RECOVER_SECONDS": 1,
    "SMI_SWEEP_ABANDON_SECONDS": 1,
    "SMI_SWEEP_POLL_SECONDS": 5,
    "SMI_SWEEP_REMIND_SECONDS": 5,
    "SMI_SWEEP_CLEANUP_SECONDS": 30,
    "SMI_REFUND_LEASE_SECONDS": 3,
    "SMI_REFUND_RETRY_SECONDS": 1,
    "SMI_TEST_UPSCALE_DELAY": 1.0,
}


def create_batch(catalog, *, good, broken, unpaid):
    """Create jobs whose inputs decide their end: completed, failed or abandoned."""
    name = catalog(IMAGE)
    broken_name = catalog(IMAGE, as_name="broken.png")
    batch = {"good": [], "broken": [], "unpaid": []}
    for index in range(good):
        batch["good"].append(make_job(name, email=f"good{index}@example.com"))
    for index in range(broken):
        batch["broken"].append(make_job(broken_name, email=f"broken{index}@example.com"))
    # The order was placed for a valid file; the engine finds it truncated.
    shutil.copyfile(image_file(BROKEN_SOURCE), catalog_path(broken_name))
    for index in range(unpaid):
        job = make_job(name, email=f"unpaid{index}@example.com")
        Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=2))
        batch["unpaid"].append(job)
    return batch


def pay(jobs):
    for job in jobs:
        confirm_payment(
            job.job_id,
            payment_intent_id=f"pi_{job.job_id.hex}",
            amount_paid=job.customer_price,
            currency=job.currency,
            actor="test",
        )


def outbox_by_recipient(settings):
    messages = collections.defaultdict(list)
    for path in files_in(settings.SMI_OUTBOX_DIR):
        if path.name.startswith("."):
            continue
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        messages[message["To"]].append(message["Subject"])
    return messages


def batch_settled(batch):
    """Return True once every job and every one of its emails reached its end."""
    good = [job.pk for job in batch["good"]]
    broken = [job.pk for job in batch["broken"]]
    unpaid = [job.pk for job in batch["unpaid"]]
    delivered = Notification.objects.filter(
        job__in=good, kind="download_ready", sent_at__isnull=False
    ).count()
    refund_emails = Notification.objects.filter(
        job__in=broken, kind="refund_issued", sent_at__isnull=False
    ).count()
    admin_emails = Notification.objects.filter(
        job__in=broken, kind="admin_job_failed", sent_at__isnull=False
    ).count()
    return (
        Job.objects.filter(pk__in=good, status="completed").count() == len(good)
        and Job.objects.filter(pk__in=broken, payment_status="refunded").count() == len(broken)
        and Job.objects.filter(pk__in=unpaid, status="abandoned").count() == len(unpaid)
        and delivered == len(good)
        and refund_emails == len(broken)
        and admin_emails == len(broken)
    )


def assert_batch_settled_once(batch, settings):
    """Check each job's end state and that no side effect happened twice."""
    mail = outbox_by_recipient(settings)
    for job in batch["good"]:
        job = Job.objects.get(pk=job.pk)
        assert job.status == "completed", job.job_id
        assert job.payment_status == "paid", job.job_id
        assert (job.output_width, job.output_height) == (1804, 1200)
        assert Path(job.output_path).is_file()
        assert JobEvent.objects.filter(job=job, to_status="completed").count() == 1
        assert len(mail[job.email]) == 1, (job.email, mail[job.email])
        assert "is ready" in mail[job.email][0]
    admin_subjects = mail[settings.SMI_ADMIN_EMAIL]
    for job in batch["broken"]:
        job = Job.objects.get(pk=job.pk)
        assert job.status == "failed", job.job_id
        assert job.failure_code == "source_unreadable"
        assert job.payment_status == "refunded"
        assert job.refund_amount == job.customer_price
        refunds = Refund.objects.filter(job=job)
        assert refunds.count() == 1
        assert refunds.get().status == "succeeded"
        assert len(mail[job.email]) == 1, (job.email, mail[job.email])
        assert "refunded" in mail[job.email][0]
        assert sum(str(job.job_id) in subject for subject in admin_subjects) == 1
    for job in batch["unpaid"]:
        job = Job.objects.get(pk=job.pk)
        assert job.status == "abandoned", job.job_id
        assert mail[job.email] == []
    assert not Job.objects.filter(status__in=UNSETTLED).exists()


@pytest.fixture
def test_database_url():
    """Return the URL of pytest-django's test database, for the child processes."""
    return database_url(connection.settings_dict)


@pytest.fixture
def shop(settings, tmp_path, test_database_url):
    processes = ShopProcesses(
        shop_environment(settings, test_database_url, **FAST_MAINTENANCE), tmp_path / "logs"
    )
    try:
        yield processes
    finally:
        processes.stop_all()


def start_workers(shop, count):
    names = [f"worker{index}" for index in range(count)]
    for name in names:
        shop.start(name, "worker", "--interval", "0.2", module="tests.slowed_smi")
    return names


def kill_during_upscale(shop, workers):
    """Wait for an upscale to start, then SIGKILL every worker and restart them."""
    wait_for(
        lambda: Job.objects.filter(status="processing").exclude(lease_owner="").exists(),
        60,
        "no upscale started within 60 s",
    )
    for name in workers:
        shop.kill(name)
        shop.restart(name)


def test_killed_workers_lose_no_job(shop, catalog, settings):
    rng = seeded_random()
    batch = create_batch(catalog, good=10, broken=3, unpaid=3)
    workers = start_workers(shop, 3)
    shop.start("scheduler", "scheduler", "--standby-interval", "0.5")
    pay(batch["good"] + batch["broken"])

    kill_during_upscale(shop, workers)
    for round_number in range(14):
        time.sleep(rng.uniform(0.3, 1.5))
        if round_number % 5 == 4:
            shop.kill("scheduler")
            shop.restart("scheduler")
        else:
            shop.kill_random(workers, rng)

    try:
        wait_for(lambda: batch_settled(batch), 150, "the batch did not settle in 150 s")
    except AssertionError:
        print(shop.logs())
        raise
    assert_batch_settled_once(batch, settings)
    assert shop.kills >= 15
    # The first round killed every worker during an upscale.
    assert JobEvent.objects.filter(event="processing_recovered").exists()


def test_sigterm_lets_worker_finish_task(shop, catalog, settings):
    batch = create_batch(catalog, good=1, broken=0, unpaid=0)
    shop.env["SMI_TEST_UPSCALE_DELAY"] = "3"
    start_workers(shop, 1)
    pay(batch["good"])
    wait_for(
        lambda: Job.objects.filter(status="processing").exclude(lease_owner="").exists(),
        60,
        "the upscale did not start within 60 s",
    )

    exit_code = shop.terminate("worker0")

    job = Job.objects.get(pk=batch["good"][0].pk)
    assert exit_code == 0
    assert job.status == "completed"
    assert not JobEvent.objects.filter(job=job, event="processing_recovered").exists()


@pytest.fixture
def private_postgres():
    server = PrivatePostgres()
    try:
        server.start()
        server.create_database("shop")
        yield server
    finally:
        server.destroy()


def test_workers_survive_postgres_restart(private_postgres, settings, tmp_path):
    """Run a batch on a private PostgreSQL server that is stopped and started twice."""
    env = shop_environment(settings, private_postgres.url("shop"), **FAST_MAINTENANCE)
    shop = ShopProcesses(env, tmp_path / "logs")
    try:
        shop.start("migrate", "manage", "migrate", "--verbosity", "0")
        assert shop.processes["migrate"][0].wait(timeout=120) == 0, shop.logs()
        shutil.copyfile(image_file(IMAGE), Path(settings.SMI_CATALOG_DIR) / "cat.png")
        shop.start("orders", "place_orders", "cat.png", "6", module="tests.crash_orders")
        assert shop.processes["orders"][0].wait(timeout=120) == 0, shop.logs()
        workers = start_workers(shop, 2)
        shop.start("scheduler", "scheduler", "--standby-interval", "0.5")

        for _ in range(2):
            time.sleep(2)
            private_postgres.stop()
            time.sleep(2)
            private_postgres.start()

        def settled():
            shop.start("check", "count_settled", module="tests.crash_orders")
            shop.processes["check"][0].wait(timeout=60)
            return (tmp_path / "logs" / "check.log").read_text().strip().endswith("settled 6 of 6")

        try:
            wait_for(settled, 120, "the batch did not settle within 120 s", interval=2)
        except AssertionError:
            print(shop.logs())
            raise
        for name in workers + ["scheduler"]:
            assert shop.processes[name][0].poll() is None, f"{name} exited"
        mail = outbox_by_recipient(settings)
        for index in range(6):
            assert len(mail[f"buyer{index}@example.com"]) == 1
    finally:
        shop.stop_all()


def child_pids(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(value) for value in path.read_text().split()] if path.exists() else []


def test_supervisor_restarts_killed_worker(shop, catalog, settings):
    batch = create_batch(catalog, good=4, broken=0, unpaid=0)
    supervisor = shop.start(
        "workers", "worker", "--concurrency", "2", "--interval", "0.2", module="tests.slowed_smi"
    )
    first = wait_for(
        lambda: len(child_pids(supervisor.pid)) == 2 and child_pids(supervisor.pid),
        60,
        "the supervisor did not start 2 workers",
    )

    os.kill(first[0], signal.SIGKILL)
    wait_for(
        lambda: len(child_pids(supervisor.pid)) == 2 and first[0] not in child_pids(supervisor.pid),
        60,
        "the supervisor did not replace the killed worker",
    )
    pay(batch["good"])
    wait_for(lambda: batch_settled(batch), 90, "the batch did not settle in 90 s")
    exit_code = shop.terminate("workers")

    assert exit_code == 0
    assert_batch_settled_once(batch, settings)
