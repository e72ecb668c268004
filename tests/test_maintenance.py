"""The maintenance sweeps, run in this process against the real database and files.

A lost task is simulated the way it happens: the task rows are deleted,
as a Redis restart or a killed worker loses them, and the clock of the
job is moved back so the step is overdue.
"""

import email
import email.policy
import os
import re
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from sellmyimages.cli import main
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, JobEvent
from sellmyimages.maintenance import leases, sweeps
from sellmyimages.maintenance.scheduler import FileLock
from sellmyimages.notifications.models import Notification
from sellmyimages.payments.models import Refund
from sellmyimages.payments.service import confirm_payment
from tests.conftest import files_in, image_file, run_tasks
from tests.factories import make_job

pytestmark = pytest.mark.django_db(transaction=True)

LINK = re.compile(r"http://testserver/downloads/([0-9a-f]{64})")


def outbox(settings, subject_word=None):
    messages = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in files_in(settings.SMI_OUTBOX_DIR)
        if not path.name.startswith(".")
    ]
    if subject_word is None:
        return messages
    return [m for m in messages if subject_word.lower() in m["Subject"].lower()]


def link_in(message):
    return LINK.search(message.get_body(preferencelist=("plain",)).get_content()).group(1)


def lose_queued_tasks():
    DBTaskResult.objects.all().delete()


def run_tasks_where(keep):
    """Run ready tasks whose import path `keep` accepts, until none is left."""
    from django_tasks_db.management.commands.db_worker import Worker

    worker = Worker(
        queue_names=["*"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="pytest",
        excluded_queue_names=[],
    )
    while True:
        ready = [row for row in DBTaskResult.objects.ready() if keep(row.task_path)]
        if not ready:
            return
        for row in ready:
            row.claim("pytest")
            row.save()
            worker.run_task(row)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def age(job, **delta):
    """Move every timestamp of a job back by `delta`."""
    job = Job.objects.get(pk=job.pk)
    shift = timedelta(**delta)
    fields = {}
    for name in (
        "created_at",
        "updated_at",
        "paid_at",
        "processing_started_at",
        "completed_at",
        "failed_at",
        "abandoned_at",
        "refunded_at",
        "download_expires_at",
        "lease_expires_at",
    ):
        value = getattr(job, name)
        if value is not None:
            fields[name] = value - shift
    Job.objects.filter(pk=job.pk).update(**fields)
    return Job.objects.get(pk=job.pk)


def pay(job):
    confirm_payment(
        job.job_id,
        payment_intent_id=f"pi_{job.job_id.hex}",
        amount_paid=job.customer_price,
        currency=job.currency,
        actor="test",
    )


@pytest.fixture
def cat(catalog):
    return catalog("photo_cat_chelsea_451x300.png")


@pytest.fixture
def quick_recovery(settings):
    settings.SMI_RECOVER_AFTER_SECONDS = 60
    return settings


# Abandonment


def test_abandon_old_unpaid_job(cat, settings):
    settings.SMI_ABANDON_AFTER_HOURS = 24
    old = age(make_job(cat), hours=25)
    recent = age(make_job(cat), hours=23)

    report = sweeps.run_sweep("abandon")

    assert Job.objects.get(pk=old.pk).status == "abandoned"
    assert Job.objects.get(pk=recent.pk).status == "awaiting_payment"
    assert report.counts == {"abandoned": 1}
    event = JobEvent.objects.filter(job=old, to_status="abandoned").get()
    assert event.actor == "scheduler"


def test_abandon_keeps_job_provider_cannot_confirm(cat, settings):
    settings.SMI_ABANDON_AFTER_HOURS = 24
    job = age(make_job(cat), hours=30)
    # A provider the shop is no longer configured for cannot be asked.
    Job.objects.filter(pk=job.pk).update(payment_provider="stripe")

    report = sweeps.run_sweep("abandon")

    assert Job.objects.get(pk=job.pk).status == "awaiting_payment"
    assert report.counts == {"kept, payment unknown": 1}


def test_abandon_never_touches_paid_job(cat, settings):
    settings.SMI_ABANDON_AFTER_HOURS = 24
    job = make_job(cat)
    pay(job)
    run_tasks()
    age(job, hours=48)

    sweeps.run_sweep("abandon")

    assert Job.objects.get(pk=job.pk).status == "completed"


def test_late_payment_revives_abandoned_job(cat, settings):
    settings.SMI_ABANDON_AFTER_HOURS = 24
    job = age(make_job(cat), hours=25)
    sweeps.run_sweep("abandon")
    assert Job.objects.get(pk=job.pk).status == "abandoned"

    pay(job)
    run_tasks()

    assert Job.objects.get(pk=job.pk).status == "completed"
    assert len(outbox(settings, "ready")) == 1


# Recovery


def test_lost_processing_task_is_requeued(cat, settings, quick_recovery):
    job = make_job(cat)
    pay(job)
    lose_queued_tasks()
    age(job, minutes=5)

    report = sweeps.run_sweep("recover")
    run_tasks()

    assert report.counts == {"processing requeued": 1}
    assert Job.objects.get(pk=job.pk).status == "completed"
    assert len(outbox(settings, "ready")) == 1


def test_requeue_not_repeated_within_interval(cat, quick_recovery):
    job = make_job(cat)
    pay(job)
    lose_queued_tasks()
    age(job, minutes=5)

    sweeps.run_sweep("recover")
    second = sweeps.run_sweep("recover")

    assert second.summary() == "nothing to do"
    assert DBTaskResult.objects.count() == 1


def test_lapsed_lease_hands_job_to_new_worker(cat, settings, quick_recovery):
    job = make_job(cat)
    pay(job)
    lose_queued_tasks()
    # The state a worker killed mid-upscale leaves: processing, its lease
    # owned by a run that no longer renews it.
    job_manager.update_status(
        job.job_id,
        "processing",
        actor="worker",
        provider="local",
        attempt_count=1,
        lease_owner="killed-run",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    report = sweeps.run_sweep("recover")
    run_tasks()

    assert report.counts == {"lease lapsed, processing requeued": 1}
    job = Job.objects.get(pk=job.pk)
    assert job.status == "completed"
    assert job.lease_owner == ""
    assert job.attempt_count == 1
    assert JobEvent.objects.filter(job=job, event="processing_recovered").count() == 1
    assert len(outbox(settings, "ready")) == 1


def test_live_lease_is_left_alone(cat, quick_recovery):
    job = make_job(cat)
    pay(job)
    lose_queued_tasks()
    job_manager.update_status(
        job.job_id,
        "processing",
        actor="worker",
        provider="local",
        attempt_count=1,
        **leases.lease_fields("live-run"),
    )

    report = sweeps.run_sweep("recover")

    assert report.summary() == "nothing to do"
    assert Job.objects.get(pk=job.pk).lease_owner == "live-run"


def test_killed_run_cannot_complete_after_recovery(cat, quick_recovery):
    job = make_job(cat)
    pay(job)
    lose_queued_tasks()
    job_manager.update_status(
        job.job_id,
        "processing",
        actor="worker",
        provider="local",
        attempt_count=1,
        lease_owner="old-run",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    sweeps.run_sweep("recover")

    renewed = job_manager.renew_lease(job.job_id, attempt=1, owner="old-run", seconds=60)

    assert renewed is False
    with transaction.atomic():
        assert leases.holds_lease(job.job_id, 1, "old-run") is False


def test_worker_lost_too_often_fails_and_refunds(cat, settings, quick_recovery):
    settings.SMI_MAX_PROCESSING_RECOVERIES = 2
    job = make_job(cat)
    pay(job)
    lose_queued_tasks()
    job_manager.update_status(
        job.job_id, "processing", actor="worker", provider="local", attempt_count=1
    )
    for _ in range(3):
        Job.objects.filter(pk=job.pk).update(
            lease_owner="crashing-run", lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        lose_queued_tasks()
        sweeps.run_sweep("recover")

    run_tasks()

    job = Job.objects.get(pk=job.pk)
    assert job.status == "failed"
    assert job.failure_code == "worker_lost"
    assert job.payment_status == "refunded"
    assert Refund.objects.filter(job=job).count() == 1
    assert len(outbox(settings, "refund")) == 1


def test_lost_delivery_is_sent_once(cat, settings, quick_recovery):
    job = make_job(cat)
    pay(job)
    run_tasks_where(lambda path: path == "sellmyimages.upscaling.tasks.process_job")
    lose_queued_tasks()
    age(job, minutes=5)

    report = sweeps.run_sweep("recover")
    run_tasks()
    sweeps.run_sweep("recover")
    run_tasks()

    assert report.counts == {"delivery requeued": 1}
    assert len(outbox(settings, "ready")) == 1
    token = link_in(outbox(settings, "ready")[0])
    assert Client().get(f"/downloads/{token}").status_code == 200


def test_lost_refund_and_admin_email_are_sent_once(catalog, settings, quick_recovery):
    broken = catalog("photo_cat_chelsea_451x300.png", as_name="broken.png")
    job = make_job(broken)
    # The source turns out unreadable only when the engine decodes it.
    shutil.copyfile(image_file("jpeg_truncated_progressive_100x100.jpg"), job.source_path)
    pay(job)
    run_tasks_where(lambda path: path == "sellmyimages.upscaling.tasks.process_job")
    assert Job.objects.get(pk=job.pk).status == "failed"
    lose_queued_tasks()
    age(job, minutes=5)

    sweeps.run_sweep("recover")
    run_tasks()
    sweeps.run_sweep("recover")
    run_tasks()

    job = Job.objects.get(pk=job.pk)
    assert job.payment_status == "refunded"
    assert job.refund_amount == job.customer_price
    assert Refund.objects.filter(job=job).count() == 1
    assert len(outbox(settings, "refund")) == 1
    admin = [m for m in outbox(settings) if m["To"] == settings.SMI_ADMIN_EMAIL]
    assert len(admin) == 1


def test_lost_refund_email_is_sent_once(catalog, settings, quick_recovery):
    broken = catalog("photo_cat_chelsea_451x300.png", as_name="broken.png")
    job = make_job(broken)
    shutil.copyfile(image_file("jpeg_truncated_progressive_100x100.jpg"), job.source_path)
    pay(job)
    run_tasks_where(lambda path: path != "sellmyimages.notifications.tasks.send_refund_email")
    assert Job.objects.get(pk=job.pk).payment_status == "refunded"
    lose_queued_tasks()
    age(job, minutes=5)

    report = sweeps.run_sweep("recover")
    run_tasks()

    assert report.counts == {"refund email requeued": 1}
    assert len(outbox(settings, "refund")) == 1


# Expiry reminders


def delivered_job(cat, settings):
    job = make_job(cat)
    pay(job)
    run_tasks()
    return Job.objects.get(pk=job.pk)


def test_reminder_sent_once_before_expiry(cat, settings):
    settings.SMI_REMINDER_HOURS = 6
    job = delivered_job(cat, settings)
    expires_at = timezone.now() + timedelta(hours=2)
    Job.objects.filter(pk=job.pk).update(download_expires_at=expires_at)

    first = sweeps.run_sweep("remind")
    run_tasks()
    second = sweeps.run_sweep("remind")
    run_tasks()

    assert first.counts == {"reminder enqueued": 1}
    assert second.summary() == "nothing to do"
    reminders = outbox(settings, "expires soon")
    assert len(reminders) == 1
    token = link_in(reminders[0])
    assert Client().get(f"/downloads/{token}").status_code == 200
    job = Job.objects.get(pk=job.pk)
    # The new link keeps the expiry the customer was told in the first email.
    assert abs((job.download_expires_at - expires_at).total_seconds()) < 1
    assert Notification.objects.filter(job=job, kind="expiry_reminder").count() == 1


def test_no_reminder_after_download_or_far_from_expiry(cat, settings):
    settings.SMI_REMINDER_HOURS = 6
    downloaded = delivered_job(cat, settings)
    Job.objects.filter(pk=downloaded.pk).update(
        download_expires_at=timezone.now() + timedelta(hours=2), download_count=1
    )
    fresh = delivered_job(cat, settings)
    Job.objects.filter(pk=fresh.pk).update(
        download_expires_at=timezone.now() + timedelta(hours=20)
    )

    report = sweeps.run_sweep("remind")

    assert report.summary() == "nothing to do"


def test_reminders_off_at_zero_hours(cat, settings):
    settings.SMI_REMINDER_HOURS = 0

    report = sweeps.run_sweep("remind")

    assert report.counts == {"reminders off": 1}


# Cleanup


def test_output_deleted_after_grace_period(cat, settings):
    settings.SMI_OUTPUT_RETENTION_HOURS = 72
    expired = delivered_job(cat, settings)
    in_grace = delivered_job(cat, settings)
    Job.objects.filter(pk=expired.pk).update(
        download_expires_at=timezone.now() - timedelta(hours=73)
    )
    Job.objects.filter(pk=in_grace.pk).update(
        download_expires_at=timezone.now() - timedelta(hours=71)
    )

    report = sweeps.run_sweep("cleanup")

    gone = Job.objects.get(pk=expired.pk)
    assert not Path(expired.output_path).exists()
    assert gone.output_path == ""
    assert gone.status == "completed"
    assert Path(in_grace.output_path).is_file()
    assert Job.objects.get(pk=in_grace.pk).output_path == in_grace.output_path
    assert report.counts == {"expired download files deleted": 1}
    # The shop's own original is never a job's file to delete.
    assert Path(expired.source_path).is_file()


def test_failed_job_files_kept_for_retention(catalog, settings):
    settings.SMI_FAILED_RETENTION_HOURS = 7 * 24
    broken = catalog("photo_cat_chelsea_451x300.png", as_name="broken.png")
    job = make_job(broken)
    output = Path(settings.SMI_OUTPUT_DIR) / "partial.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"partial")
    job_manager.mark_failed(job.job_id, "test_failure")
    job_manager.update_job(job.job_id, output_path=str(output))

    age(job, days=6)
    sweeps.run_sweep("cleanup")
    assert output.is_file()

    age(job, days=2)
    sweeps.run_sweep("cleanup")
    assert not output.exists()
    assert Job.objects.get(pk=job.pk).output_path == ""


def test_abandoned_remote_source_deleted_after_a_day(cat, settings):
    settings.SMI_ABANDONED_RETENTION_HOURS = 24
    job = make_job(cat)
    fetched = Path(settings.SMI_UPLOADS_DIR) / f"{job.job_id}.png"
    fetched.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.source_path, fetched)
    Job.objects.filter(pk=job.pk).update(source_kind="url", source_path=str(fetched))
    job_manager.update_status(job.job_id, "abandoned", actor="test")

    age(job, hours=23)
    sweeps.run_sweep("cleanup")
    assert fetched.is_file()

    age(job, hours=2)
    sweeps.run_sweep("cleanup")
    assert not fetched.exists()
    assert Job.objects.get(pk=job.pk).source_path == ""


def test_old_temporary_files_deleted(settings):
    settings.SMI_TMP_RETENTION_HOURS = 24
    outputs = Path(settings.SMI_OUTPUT_DIR)
    outputs.mkdir(parents=True, exist_ok=True)
    stale = outputs / ".job.png.abc123.tmp"
    fresh = outputs / ".other.png.def456.tmp"
    finished = outputs / "finished.png"
    for path in (stale, fresh, finished):
        path.write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))
    os.utime(finished, (day_ago, day_ago))

    report = sweeps.run_sweep("cleanup")

    assert not stale.exists()
    assert fresh.exists()
    assert finished.exists()
    assert report.counts == {"temporary files deleted": 1}


# Commands and endpoints


def test_smi_sweep_prints_each_sweep(cat, settings):
    settings.SMI_ABANDON_AFTER_HOURS = 24
    age(make_job(cat), hours=25)

    result = CliRunner().invoke(main, ["sweep"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["abandon", "recover", "poll", "remind", "cleanup"]
    assert "abandoned 1" in lines[0]


def test_readyz_reports_unreachable_queue(settings):
    assert Client().get("/readyz").json() == {
        "status": "ok",
        "database": "ok",
        "queue": "ok",
    }
    settings.TASKS = {
        "default": {**settings.TASKS["default"], "BACKEND": "django_tasks_celery.CeleryBackend"}
    }
    settings.SMI_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"

    response = Client().get("/readyz")

    assert response.status_code == 503
    assert response.json()["queue"] == "ConnectionError"
    assert response.json()["database"] == "ok"


def test_file_lock_admits_one_scheduler(tmp_path):
    first = FileLock(tmp_path / "scheduler.lock")
    second = FileLock(tmp_path / "scheduler.lock")

    assert first.acquire() is True
    assert second.acquire() is False
    first.release()
    assert second.acquire() is True
    second.release()



def test_admin_failed_retention_applies(catalog, settings):
    """The failed-job retention set in the admin overrides the environment's."""
    from sellmyimages.shopsettings.config import save_settings
    from sellmyimages.shopsettings.models import ShopSettings

    settings.SMI_FAILED_RETENTION_HOURS = 7 * 24
    save_settings(ShopSettings(failed_retention_hours=24), actor="test")
    job = make_job(catalog("photo_cat_chelsea_451x300.png", as_name="broken.png"))
    output = Path(settings.SMI_OUTPUT_DIR) / "partial.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"partial")
    job_manager.mark_failed(job.job_id, "test_failure")
    job_manager.update_job(job.job_id, output_path=str(output))

    age(job, days=2)
    sweeps.run_sweep("cleanup")

    assert not output.exists()
    assert Job.objects.get(pk=job.pk).output_path == ""
