import logging

from django.tasks import task

from sellmyimages.jobs.models import Job, PaymentStatus
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.payments.service import refund_job

logger = logging.getLogger(__name__)


@task()
def refund_failed_job(job_id):
    """Refund a failed, paid job in full; a repeat finds the same refund row."""
    job = Job.objects.get(job_id=job_id)
    if job.payment_status != PaymentStatus.PAID and not job.refunds.exists():
        return "not_paid"
    try:
        refund = refund_job(job_id, reason=job.failure_code or "job_failed")
    except PaymentError as exc:
        if exc.transient:
            raise
        logger.error("event=refund_rejected job_id=%s error=%s", job_id, exc)
        return "rejected"
    return refund.status
