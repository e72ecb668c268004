"""The scheduled sweeps. Each may run any number of times, on any machine.

A sweep reads job rows and decides what is due. It then either changes
the job through the JobManager with a compare-and-set, or enqueues the
task that does the work, and every task checks the job again before
acting. Running a sweep twice, or two sweeps at once, therefore never
does anything twice.
`smi sweep` runs them all once; `smi scheduler` runs each on its interval.
"""

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Exists, OuterRef
from django.utils import timezone

from sellmyimages.jobs.exceptions import ConcurrentUpdate, InvalidTransition
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import (
    HOLDS_FILES,
    Job,
    JobEvent,
    PaymentStatus,
    SourceKind,
    Status,
)
from sellmyimages.jobs.pipeline import schedule_next_step

logger = logging.getLogger(__name__)

ACTOR = "scheduler"
# Steps that became due longer ago than this are left to an operator: a
# step that failed for a week will not succeed on the next try either.
RECOVERY_WINDOW = timedelta(days=7)
# The failure code of a job whose upscale lost its worker too many times.
WORKER_LOST = "worker_lost"


@dataclass
class SweepReport:
    """The outcome counts of one run of a sweep."""

    name: str
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, outcome, number=1):
        if number:
            self.counts[outcome] = self.counts.get(outcome, 0) + number

    def summary(self):
        if not self.counts:
            return "nothing to do"
        return ", ".join(f"{name} {count}" for name, count in self.counts.items())


def shop_config():
    """Return the shop settings in force: the admin's overrides, else the environment's."""
    if apps.is_installed("sellmyimages.shopsettings"):
        from sellmyimages import shopsettings

        return shopsettings.get()
    return SimpleNamespace(
        abandon_after_hours=settings.SMI_ABANDON_AFTER_HOURS,
        download_expiry_hours=settings.SMI_DOWNLOAD_EXPIRY_HOURS,
        reminder_hours=getattr(settings, "SMI_REMINDER_HOURS", 6),
        output_retention_hours=getattr(settings, "SMI_OUTPUT_RETENTION_HOURS", 72),
        failed_retention_hours=settings.SMI_FAILED_RETENTION_HOURS,
        abandoned_retention_hours=settings.SMI_ABANDONED_RETENTION_HOURS,
    )


def batch_size():
    return settings.SMI_SWEEP_BATCH


def recover_after():
    return timedelta(seconds=settings.SMI_RECOVER_AFTER_SECONDS)


# The queries behind the sweeps. Each repeats the condition of its partial
# index in jobs.models.MAINTENANCE_INDEXES, so that PostgreSQL can use it;
# bench/maintenance_queries.py times them on a million jobs.


def unpaid_past_timeout(now, hours):
    cutoff = now - timedelta(hours=hours)
    return Job.objects.filter(status=Status.AWAITING_PAYMENT, created_at__lt=cutoff).order_by(
        "created_at"
    )


def stale_pending(now):
    return Job.objects.filter(status=Status.PENDING, updated_at__lt=now - recover_after()).order_by(
        "updated_at"
    )


def lapsed_leases(now, engines):
    return Job.objects.filter(
        status=Status.PROCESSING, lease_expires_at__lt=now, provider__in=engines
    ).order_by("lease_expires_at")


def undelivered(now):
    return (
        Job.objects.filter(
            status=Status.COMPLETED,
            download_expires_at__isnull=True,
            completed_at__lt=now - recover_after(),
            completed_at__gte=now - RECOVERY_WINDOW,
        )
        .exclude(output_path="")
        .exclude(email="")
        .order_by("completed_at")
    )


def recently_failed(now):
    return Job.objects.filter(
        status=Status.FAILED,
        failed_at__lt=now - recover_after(),
        failed_at__gte=now - RECOVERY_WINDOW,
    ).order_by("failed_at")


def recently_refunded(now):
    return (
        Job.objects.filter(
            refunded_at__lt=now - recover_after(), refunded_at__gte=now - RECOVERY_WINDOW
        )
        .exclude(email="")
        .order_by("refunded_at")
    )


def reminders_due(now, hours):
    from sellmyimages.notifications.models import Notification, NotificationKind

    reminded = Notification.objects.filter(
        job=OuterRef("pk"), kind=NotificationKind.EXPIRY_REMINDER, sent_at__isnull=False
    )
    return (
        Job.objects.filter(
            status=Status.COMPLETED,
            download_expires_at__gt=now,
            download_expires_at__lte=now + timedelta(hours=hours),
            download_count=0,
            download_token_hash__isnull=False,
        )
        .exclude(output_path="")
        .exclude(email="")
        .filter(~Exists(reminded))
        .order_by("download_expires_at")
    )


def expired_downloads(now, grace):
    return (
        Job.objects.filter(status=Status.COMPLETED, download_expires_at__lt=now - grace)
        .exclude(output_path="")
        .order_by("download_expires_at")
    )


def never_delivered(now, expiry, grace):
    return (
        Job.objects.filter(
            status=Status.COMPLETED,
            download_expires_at__isnull=True,
            completed_at__lt=now - expiry - grace,
        )
        .exclude(output_path="")
        .order_by("completed_at")
    )


def failed_with_files(now, hours=None):
    if hours is None:
        hours = shop_config().failed_retention_hours
    cutoff = now - timedelta(hours=hours)
    return Job.objects.filter(HOLDS_FILES, status=Status.FAILED, failed_at__lt=cutoff).order_by(
        "failed_at"
    )


def abandoned_with_files(now, hours=None):
    if hours is None:
        hours = shop_config().abandoned_retention_hours
    cutoff = now - timedelta(hours=hours)
    return Job.objects.filter(
        HOLDS_FILES, status=Status.ABANDONED, abandoned_at__lt=cutoff
    ).order_by("abandoned_at")


def maintenance_queries(now):
    """Return every sweep's job query by name, as the sweeps run them now."""
    config = shop_config()
    grace = timedelta(hours=config.output_retention_hours)
    expiry = timedelta(hours=config.download_expiry_hours)
    failed = recently_failed(now)
    return {
        "abandon: unpaid past timeout": unpaid_past_timeout(now, config.abandon_after_hours),
        "recover: stale pending": stale_pending(now),
        "recover: lapsed leases": lapsed_leases(now, local_engine_names()),
        "recover: undelivered": undelivered(now),
        "recover: failures unreported": failed.filter(~Exists(admin_emailed())),
        "recover: refunds owed": failed.filter(payment_status=PaymentStatus.PAID),
        "recover: refund emails": recently_refunded(now),
        "remind: expiring soon": reminders_due(now, max(config.reminder_hours, 1)),
        "cleanup: expired downloads": expired_downloads(now, grace),
        "cleanup: never delivered": never_delivered(now, expiry, grace),
        "cleanup: failed with files": failed_with_files(now),
        "cleanup: abandoned with files": abandoned_with_files(now),
    }


def admin_emailed():
    from sellmyimages.notifications.models import Notification, NotificationKind

    return Notification.objects.filter(
        job=OuterRef("pk"), kind=NotificationKind.ADMIN_JOB_FAILED, sent_at__isnull=False
    )


# Abandonment


def abandon_unpaid(now=None):
    """Abandon jobs left unpaid past the timeout, unless the provider saw a payment."""
    from sellmyimages.payments.backends import get_payment_backend
    from sellmyimages.payments.backends.base import PaymentError

    now = now or timezone.now()
    report = SweepReport("abandon")
    hours = shop_config().abandon_after_hours
    for job in unpaid_past_timeout(now, hours)[: batch_size()]:
        try:
            paid = get_payment_backend(job.payment_provider or None).is_session_paid(job)
        except (PaymentError, ImproperlyConfigured) as exc:
            logger.warning(
                "event=abandon_check_failed job_id=%s provider=%s error=%s",
                job.job_id,
                job.payment_provider,
                exc,
            )
            paid = None
        if paid is None:
            report.add("kept, payment unknown")
            continue
        if paid:
            # The confirmation (a webhook, the success page) never reached
            # us; the job is kept for the payment provider's reconciliation.
            logger.warning("event=abandon_skipped_paid job_id=%s", job.job_id)
            report.add("kept, paid at the provider")
            continue
        try:
            changed = job_manager.update_status(
                job.job_id,
                Status.ABANDONED,
                expected_status=Status.AWAITING_PAYMENT,
                actor=ACTOR,
                reason=f"not paid within {hours} hours",
            )
        except ConcurrentUpdate:
            report.add("changed meanwhile")
            continue
        report.add("abandoned" if changed else "changed meanwhile")
    return report


# Recovery


def recently_requeued(job, now):
    return JobEvent.objects.filter(
        job=job, event="step_requeued", created_at__gte=now - recover_after()
    ).exists()


def requeue(job, step, enqueue, report):
    """Record that `step` is enqueued again, then enqueue it."""
    job_manager.record_event(
        job.job_id, "step_requeued", actor=ACTOR, reason=f"{step} was overdue", data={"step": step}
    )
    try:
        enqueue()
    except Exception as exc:  # any queue backend's connection error
        logger.error("event=requeue_failed job_id=%s step=%s error=%r", job.job_id, step, exc)
        report.add(f"{step} not enqueued")
        return
    logger.info("event=step_requeued job_id=%s step=%s", job.job_id, step)
    report.add(f"{step} requeued")


def recover_overdue_steps(now=None):
    """Enqueue again every step whose task was lost, and hand on lapsed leases."""
    now = now or timezone.now()
    report = SweepReport("recover")
    recover_pending(now, report)
    recover_processing(now, report)
    recover_deliveries(now, report)
    recover_failures(now, report)
    recover_refunds(now, report)
    return report


def recover_pending(now, report):
    from sellmyimages.upscaling.tasks import process_job

    for job in stale_pending(now)[: batch_size()]:
        if recently_requeued(job, now):
            continue
        requeue(job, "processing", lambda job=job: process_job.enqueue(str(job.job_id)), report)


def recover_processing(now, report):
    from sellmyimages.upscaling.tasks import process_job

    # Remote providers carry on without our worker; polling covers them.
    for job in lapsed_leases(now, local_engine_names())[: batch_size()]:
        losses = JobEvent.objects.filter(job=job, event="processing_recovered").count()
        if job.lease_owner and losses >= settings.SMI_MAX_PROCESSING_RECOVERIES:
            fail_worker_lost(job, losses, report)
            continue
        attempt = job_manager.recover_lapsed_lease(
            job.job_id, seconds=settings.SMI_RECOVER_AFTER_SECONDS, actor=ACTOR
        )
        if attempt is None:
            continue
        try:
            process_job.enqueue(str(job.job_id), attempt=attempt)
        except Exception as exc:  # the lease lapses again and the next run retries
            logger.error("event=requeue_failed job_id=%s step=processing error=%r", job.job_id, exc)
            report.add("processing not enqueued")
            continue
        outcome = "lease lapsed, processing requeued" if job.lease_owner else "processing requeued"
        logger.info("event=processing_recovered job_id=%s attempt=%d", job.job_id, attempt)
        report.add(outcome)


def local_engine_names():
    """Return the names of the engines that upscale inside the worker's process."""
    from sellmyimages.upscaling.backends import get_upscaler

    names = []
    for name in dict.fromkeys(["local", *settings.SMI_UPSCALERS]):
        try:
            if get_upscaler(name).synchronous:
                names.append(name)
        except ImproperlyConfigured:
            continue
    return names


def fail_worker_lost(job, losses, report):
    try:
        job_manager.mark_failed(
            job.job_id,
            WORKER_LOST,
            detail=f"The worker stopped during the upscale {losses + 1} times.",
            actor=ACTOR,
        )
    except (ConcurrentUpdate, InvalidTransition):
        report.add("changed meanwhile")
        return
    logger.error("event=upscale_failed job_id=%s code=%s", job.job_id, WORKER_LOST)
    report.add("failed, worker lost")


def recover_deliveries(now, report):
    from sellmyimages.notifications.tasks import deliver_download

    for job in undelivered(now)[: batch_size()]:
        if recently_requeued(job, now):
            continue
        requeue(job, "delivery", lambda job=job: deliver_download.enqueue(str(job.job_id)), report)


def recover_failures(now, report):
    """Requeue the admin email and the automatic refund of failed jobs."""
    failed = recently_failed(now)
    unreported = failed.filter(~Exists(admin_emailed()))
    refund_owed = failed.filter(payment_status=PaymentStatus.PAID)
    seen = set()
    for job in [*unreported[: batch_size()], *refund_owed[: batch_size()]]:
        if job.pk in seen or recently_requeued(job, now):
            continue
        seen.add(job.pk)
        # schedule_next_step enqueues both the admin email and, for a job
        # still marked paid, the refund; each task does nothing if done.
        requeue(job, "failure", lambda job=job: schedule_next_step(job.job_id, Status.FAILED), report)


def recover_refunds(now, report):
    """Requeue stalled refund attempts and unsent refund emails."""
    from sellmyimages.notifications.models import Notification, NotificationKind
    from sellmyimages.notifications.tasks import send_refund_email
    from sellmyimages.payments import tasks as payment_tasks
    from sellmyimages.payments.models import Refund, RefundStatus

    # Payment backends that retry a refund in numbered attempts enqueue each
    # attempt's fallback one lease later. A refund still requested well
    # after that has lost its fallback task.
    send_refund_attempt = getattr(payment_tasks, "send_refund_attempt", None)
    lease = timedelta(seconds=getattr(settings, "SMI_REFUND_LEASE_SECONDS", 0))
    stalled = Refund.objects.none() if send_refund_attempt is None else Refund.objects.filter(
        status=RefundStatus.REQUESTED,
        attempts__gt=0,
        updated_at__lt=now - lease - recover_after(),
        updated_at__gte=now - RECOVERY_WINDOW,
    ).select_related("job")
    for refund in stalled.order_by("updated_at")[: batch_size()]:
        if recently_requeued(refund.job, now):
            continue
        requeue(
            refund.job,
            "refund",
            lambda refund=refund: send_refund_attempt.enqueue(str(refund.id), refund.attempts + 1),
            report,
        )

    succeeded = Refund.objects.filter(
        status=RefundStatus.SUCCEEDED,
        job__in=recently_refunded(now).values("pk")[: batch_size()],
    ).select_related("job")
    for refund in succeeded:
        emailed = Notification.objects.filter(
            job=refund.job,
            kind=NotificationKind.REFUND_ISSUED,
            dedupe_key=str(refund.id),
            sent_at__isnull=False,
        ).exists()
        if emailed or recently_requeued(refund.job, now):
            continue
        requeue(
            refund.job,
            "refund email",
            lambda refund=refund: send_refund_email.enqueue(str(refund.id)),
            report,
        )


# Provider polling


def poll_providers(now=None):
    """Ask remote providers about processing jobs whose callback has not come."""
    from sellmyimages.upscaling import tasks as upscaling_tasks

    report = SweepReport("poll")
    report.add("jobs polled", upscaling_tasks.poll_processing_jobs(limit=batch_size()))
    return report


# Expiry reminders


def send_expiry_reminders(now=None):
    """Enqueue one reminder for each unused download link that expires soon."""
    from sellmyimages.notifications.tasks import send_expiry_reminder

    now = now or timezone.now()
    report = SweepReport("remind")
    hours = shop_config().reminder_hours
    if hours <= 0:
        report.add("reminders off")
        return report
    for job in reminders_due(now, hours)[: batch_size()]:
        try:
            send_expiry_reminder.enqueue(str(job.job_id))
        except Exception as exc:  # any queue backend's connection error
            logger.error("event=enqueue_failed job_id=%s step=reminder error=%r", job.job_id, exc)
            report.add("reminder not enqueued")
            continue
        report.add("reminder enqueued")
    return report


# File cleanup


def clean_up_files(now=None):
    """Delete files past their retention; the job rows stay."""
    now = now or timezone.now()
    report = SweepReport("cleanup")
    config = shop_config()
    grace = timedelta(hours=config.output_retention_hours)
    expiry = timedelta(hours=config.download_expiry_hours)

    for name, jobs, reason in (
        (
            "expired download",
            expired_downloads(now, grace),
            "download expired and its grace period passed",
        ),
        (
            "undelivered output",
            never_delivered(now, expiry, grace),
            "output never delivered and retention passed",
        ),
        (
            "failed job",
            failed_with_files(now, config.failed_retention_hours),
            "failed job's retention passed",
        ),
        (
            "abandoned job",
            abandoned_with_files(now, config.abandoned_retention_hours),
            "abandoned job's retention passed",
        ),
    ):
        for job in jobs[: batch_size()]:
            report.add(f"{name} files deleted", delete_job_files(job, reason))

    report.add("temporary files deleted", delete_temporary_files(now))
    return report


def managed_folders():
    """Return the folders whose files the service wrote and may delete."""
    return [Path(settings.SMI_OUTPUT_DIR), Path(settings.SMI_UPLOADS_DIR)]


def is_managed(path):
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(folder.resolve()) for folder in managed_folders())


def delete_job_files(job, reason):
    """Delete the output and any fetched source copy of a job; return the count.

    Each file is deleted before its path is cleared, so a crash between the
    two leaves a path to a missing file, which the next run clears, rather
    than a file nothing points at.
    """
    fields = {}
    deleted = 0
    paths = {"output_path": job.output_path}
    if job.source_kind == SourceKind.URL:
        paths["source_path"] = job.source_path
    for name, path in paths.items():
        if not path:
            continue
        if not is_managed(path):
            logger.warning(
                "event=cleanup_skipped job_id=%s field=%s reason=outside_data_folders",
                job.job_id,
                name,
            )
            continue
        try:
            os.unlink(path)
            deleted += 1
        except FileNotFoundError:
            pass
        fields[name] = ""
    if fields:
        job_manager.update_job(job.job_id, actor=ACTOR, reason=reason, **fields)
        logger.info(
            "event=job_files_deleted job_id=%s fields=%s", job.job_id, ",".join(sorted(fields))
        )
    return deleted


def temporary_folders():
    data = Path(settings.DATA_DIR)
    return [
        Path(settings.SMI_TMP_DIR),
        Path(settings.SMI_OUTPUT_DIR),
        Path(settings.SMI_UPLOADS_DIR),
        Path(settings.SMI_OUTBOX_DIR),
        data / "thumbnails",
    ]


def is_temporary(path, folder):
    """Return True for files that writers leave behind when they are killed.

    Writers in this service write to a hidden name (".<final name>.<random>.tmp"
    or ".part") and rename it; everything in SMI_TMP_DIR is temporary.
    """
    if folder == Path(settings.SMI_TMP_DIR):
        return True
    name = path.name
    return name.startswith(".") and (".tmp" in name or name.endswith(".part"))


def delete_temporary_files(now):
    cutoff = time.time() - settings.SMI_TMP_RETENTION_HOURS * 3600
    deleted = 0
    for folder in temporary_folders():
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            try:
                if not path.is_file() or not is_temporary(path, folder):
                    continue
                if path.stat().st_mtime >= cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            deleted += 1
    if deleted:
        logger.info("event=temporary_files_deleted count=%d", deleted)
    return deleted


# Running them


SWEEPS = {
    "abandon": abandon_unpaid,
    "recover": recover_overdue_steps,
    "poll": poll_providers,
    "remind": send_expiry_reminders,
    "cleanup": clean_up_files,
}


def run_sweep(name, now=None):
    """Run one sweep by name and return its SweepReport, timed."""
    started = time.monotonic()
    report = SWEEPS[name](now)
    report.seconds = time.monotonic() - started
    counts = " ".join(
        f"{key.replace(',', '').replace(' ', '_')}={value}" for key, value in report.counts.items()
    )
    logger.info(
        "event=sweep_finished sweep=%s seconds=%.3f%s",
        name,
        report.seconds,
        f" {counts}" if counts else "",
    )
    return report


def run_all(now=None):
    """Run every sweep once, in order, and return their reports."""
    return [run_sweep(name, now) for name in SWEEPS]
