"""Payment tasks: automatic refunds with retries, Stripe fees, admin emails."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.tasks import task
from django.urls import reverse
from django.utils import timezone

from sellmyimages.jobs.exceptions import JobValidationError
from sellmyimages.jobs.models import Job, PaymentStatus, Status
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.payments.models import Dispute, Refund, RefundKind
from sellmyimages.payments.service import record_payment_fee as store_payment_fee
from sellmyimages.payments.service import refund_job, run_refund_attempt

logger = logging.getLogger(__name__)

# Stripe settles a card payment's balance transaction within seconds, and
# some payment methods take days; fee lookups stop after this many tries.
FEE_MAX_ATTEMPTS = 6
FEE_RETRY_SECONDS = 60


@task()
def refund_failed_job(job_id):
    """Refund a failed, paid job in full; a repeat finds the same refund row."""
    job = Job.objects.get(job_id=job_id)
    started = job.refunds.filter(kind=RefundKind.AUTOMATIC).exists()
    if job.status != Status.FAILED and not started:
        # An admin retried the job after this task was queued; refunding now
        # would pay back a job that is about to be delivered.
        logger.info("event=automatic_refund_skipped job_id=%s status=%s", job_id, job.status)
        return "not_failed"
    if job.payment_status != PaymentStatus.PAID and not job.refunds.exists():
        return "not_paid"
    try:
        refund = refund_job(job_id, reason=job.failure_code or "job_failed")
    except JobValidationError as exc:
        # Refunded in full some other way (an admin or the dashboard) first.
        logger.info("event=automatic_refund_skipped job_id=%s reason=%s", job_id, exc)
        return "not_refundable"
    return refund.status


@task()
def send_refund_attempt(refund_id, attempt):
    """Make one numbered attempt at a refund; see payments.service for the protocol."""
    return run_refund_attempt(refund_id, attempt)


@task()
def record_payment_fee(job_id, attempt=1):
    """Store Stripe's fee for a job's payment, retrying until Stripe has settled it."""
    try:
        result = store_payment_fee(job_id)
    except PaymentError as exc:
        if not exc.transient:
            logger.error("event=payment_fee_failed job_id=%s error=%s", job_id, exc)
            return "failed"
        result = "not_settled"
    if result == "not_settled" and attempt < FEE_MAX_ATTEMPTS:
        delay = timedelta(seconds=FEE_RETRY_SECONDS * 2 ** (attempt - 1))
        record_payment_fee.using(run_after=timezone.now() + delay).enqueue(
            str(job_id), attempt=attempt + 1
        )
    return result


def admin_job_url(job):
    return settings.PUBLIC_BASE_URL + reverse("admin:jobs_job_change", args=[job.pk])


@task()
def notify_admin_of_refund_failure(refund_id, attempts):
    """Email the admin that a refund could not be made; once per refund and round."""
    from sellmyimages.notifications.emails import send_templated_email
    from sellmyimages.notifications.models import NotificationKind
    from sellmyimages.notifications.tasks import claim, mark_sent

    with transaction.atomic():
        refund = Refund.objects.select_related("job").get(pk=refund_id)
        job = Job.objects.select_for_update().get(pk=refund.job_id)
        notification = claim(
            job, NotificationKind.ADMIN_REFUND_FAILED, f"{refund.id}-{attempts}"
        )
        if notification is None:
            return "already_sent"
        send_templated_email(
            "admin_refund_failed",
            settings.SMI_ADMIN_EMAIL,
            {"job": job, "refund": refund, "admin_url": admin_job_url(job)},
        )
        mark_sent(notification)
    return "sent"


@task()
def notify_admin_of_dispute(dispute_pk):
    """Email the admin that a customer's bank opened a dispute; once per dispute."""
    from sellmyimages.notifications.emails import send_templated_email
    from sellmyimages.notifications.models import NotificationKind
    from sellmyimages.notifications.tasks import claim, mark_sent

    with transaction.atomic():
        dispute = Dispute.objects.select_related("job").get(pk=dispute_pk)
        job = Job.objects.select_for_update().get(pk=dispute.job_id)
        notification = claim(
            job, NotificationKind.ADMIN_DISPUTE_OPENED, dispute.dispute_id[:64]
        )
        if notification is None:
            return "already_sent"
        send_templated_email(
            "admin_dispute_opened",
            settings.SMI_ADMIN_EMAIL,
            {"job": job, "dispute": dispute, "admin_url": admin_job_url(job)},
        )
        mark_sent(notification)
    return "sent"
