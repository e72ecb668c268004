"""The one table of allowed status changes."""

from sellmyimages.jobs.models import PaymentStatus, Status

ALLOWED_TRANSITIONS = {
    Status.AWAITING_PAYMENT: {Status.PENDING, Status.ABANDONED, Status.FAILED},
    Status.PENDING: {Status.PROCESSING, Status.FAILED},
    Status.PROCESSING: {Status.COMPLETED, Status.FAILED},
    # An admin retry, allowed only while the payment is not refunded.
    Status.FAILED: {Status.PENDING},
    # A payment that arrives after the checkout timed out revives the job.
    Status.ABANDONED: {Status.PENDING},
    Status.COMPLETED: set(),
}

# The timestamp field that records when a job entered each status.
STATUS_TIMESTAMPS = {
    Status.PROCESSING: "processing_started_at",
    Status.COMPLETED: "completed_at",
    Status.FAILED: "failed_at",
    Status.ABANDONED: "abandoned_at",
}

REFUNDED_PAYMENT_STATUSES = {PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED}


def transition_error(job, to_status):
    """Return why `job` may not move to `to_status`, or "" if it may."""
    from_status = job.status
    if to_status not in ALLOWED_TRANSITIONS.get(from_status, set()):
        return "that transition is not allowed"
    if (
        from_status == Status.FAILED
        and to_status == Status.PENDING
        and job.payment_status in REFUNDED_PAYMENT_STATUSES
    ):
        return "the payment was refunded"
    return ""
