"""Email tasks. Each claims its Notification row and marks it sent in the
same transaction, so running a task twice never sends a message twice.
"""

import logging

from django.conf import settings
from django.db import transaction
from django.tasks import task
from django.urls import reverse
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, PaymentStatus, Status
from sellmyimages.notifications.emails import send_templated_email
from sellmyimages.notifications.models import Notification, NotificationKind
from sellmyimages.payments.models import Refund

logger = logging.getLogger(__name__)


def claim(job, kind, dedupe_key=""):
    """Return the locked Notification row, or None if it was already sent."""
    notification, _created = Notification.objects.get_or_create(
        job=job, kind=kind, dedupe_key=dedupe_key
    )
    notification = Notification.objects.select_for_update().get(pk=notification.pk)
    if notification.sent_at is not None:
        return None
    return notification


def mark_sent(notification):
    notification.sent_at = timezone.now()
    notification.attempts += 1
    notification.save(update_fields=["sent_at", "attempts"])
    job_manager.record_event(
        notification.job.job_id, "email_sent", data={"kind": notification.kind}
    )
    logger.info(
        "event=email_sent job_id=%s kind=%s", notification.job.job_id, notification.kind
    )


def download_url(token):
    return settings.PUBLIC_BASE_URL + reverse("delivery:download", args=[token])


def order_url(job):
    return settings.PUBLIC_BASE_URL + reverse("storefront:order", args=[job.job_id])


def send_download_email(job, kind=NotificationKind.DOWNLOAD_READY, dedupe_key="", actor="system"):
    """Issue a fresh download token and email its link, inside a transaction."""
    notification = claim(job, kind, dedupe_key)
    if notification is None:
        return "already_sent"
    if not job.email:
        job_manager.record_event(job.job_id, "email_skipped", reason="the job has no email")
        return "no_email"
    token = job_manager.generate_download_token(job.job_id, actor=actor)
    job.refresh_from_db()
    send_templated_email(
        "download_ready",
        job.email,
        {
            "job": job,
            "download_url": download_url(token),
            "order_url": order_url(job),
            "expires_at": job.download_expires_at,
        },
    )
    mark_sent(notification)
    return "sent"


@task()
def deliver_download(job_id):
    """Send the download-ready email for a completed job, once."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(job_id=job_id)
        if job.status != Status.COMPLETED:
            return "not_completed"
        if job.payment_status == PaymentStatus.REFUNDED:
            return "refunded"
        return send_download_email(job)


@task()
def send_refund_email(refund_id):
    with transaction.atomic():
        refund = Refund.objects.select_related("job").get(pk=refund_id)
        job = Job.objects.select_for_update().get(pk=refund.job_id)
        notification = claim(job, NotificationKind.REFUND_ISSUED, str(refund.id))
        if notification is None:
            return "already_sent"
        if not job.email:
            return "no_email"
        send_templated_email(
            "refund_issued",
            job.email,
            {"job": job, "refund": refund, "order_url": order_url(job)},
        )
        mark_sent(notification)
    return "sent"


@task()
def notify_admin_of_failure(job_id):
    with transaction.atomic():
        job = Job.objects.select_for_update().get(job_id=job_id)
        if job.status != Status.FAILED or job.failed_at is None:
            return "not_failed"
        notification = claim(job, NotificationKind.ADMIN_JOB_FAILED, job.failed_at.isoformat())
        if notification is None:
            return "already_sent"
        admin_url = settings.PUBLIC_BASE_URL + reverse(
            "admin:jobs_job_change", args=[job.pk]
        )
        send_templated_email(
            "admin_job_failed", settings.SMI_ADMIN_EMAIL, {"job": job, "admin_url": admin_url}
        )
        mark_sent(notification)
    return "sent"


@task()
def send_expiry_reminder(job_id):
    """Remind the customer, once, that an unused download link expires soon.

    Only the hash of a token is stored, so the reminder carries a new token
    that expires at the same moment as the old one; the link in the first
    email stops working, as it does after any new link.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(job_id=job_id)
        now = timezone.now()
        if (
            job.status != Status.COMPLETED
            or job.download_count
            or not job.email
            or job.download_token_hash is None
            or job.download_expires_at is None
            or job.download_expires_at <= now
        ):
            return "not_due"
        notification = claim(job, NotificationKind.EXPIRY_REMINDER)
        if notification is None:
            return "already_sent"
        remaining_hours = (job.download_expires_at - now).total_seconds() / 3600
        token = job_manager.generate_download_token(
            job.job_id, expires_in_hours=remaining_hours, actor="scheduler"
        )
        job.refresh_from_db()
        send_templated_email(
            "expiry_reminder",
            job.email,
            {
                "job": job,
                "download_url": download_url(token),
                "expires_at": job.download_expires_at,
            },
        )
        mark_sent(notification)
    return "sent"
