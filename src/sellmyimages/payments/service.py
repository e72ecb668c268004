"""Confirming payments and issuing refunds, for every payment provider."""

import logging
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from sellmyimages.jobs.exceptions import JobValidationError
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, PaymentStatus, Status
from sellmyimages.payments.backends import get_payment_backend
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.payments.models import Refund, RefundKind, RefundStatus

logger = logging.getLogger(__name__)


def confirm_payment(job_id, *, payment_intent_id, amount_paid, currency, email="", actor):
    """Record a payment the provider confirmed; start processing.

    The amount comes from the provider, and it must match the price the
    server computed: a short payment is recorded on the job's trail and
    does not start processing.
    """
    job = job_manager.get_job(job_id)
    if Decimal(amount_paid) != job.customer_price or currency.lower() != job.currency:
        job_manager.record_event(
            job.job_id,
            "payment_amount_mismatch",
            actor=actor,
            reason=f"paid {amount_paid} {currency}, expected {job.customer_price} {job.currency}",
        )
        raise JobValidationError(
            "amount_paid",
            f"{amount_paid} {currency} does not match the price "
            f"{job.customer_price} {job.currency}.",
        )
    return job_manager.mark_payment_completed(
        job.job_id, payment_intent_id, email=email, amount=amount_paid, actor=actor
    )


def refund_job(job_id, *, amount=None, reason, kind=RefundKind.AUTOMATIC, actor="system"):
    """Refund a paid job once; return the Refund row.

    The row is committed before the provider is called and its id is the
    idempotency key, so a crash between the request and the answer is
    repaired by calling this again, which re-sends the same request.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(job_id=job_id)
        if kind == RefundKind.AUTOMATIC:
            refund = Refund.objects.filter(job=job, kind=RefundKind.AUTOMATIC).first()
        else:
            refund = None
        if refund is None:
            if job.payment_status not in (PaymentStatus.PAID, PaymentStatus.PARTIALLY_REFUNDED):
                raise JobValidationError(
                    "payment_status", f"is {job.payment_status!r}; only a paid job can be refunded."
                )
            already = job.refund_amount or Decimal("0")
            refundable = job.customer_price - already
            amount = refundable if amount is None else Decimal(amount)
            if amount <= 0 or amount > refundable:
                raise JobValidationError(
                    "amount", f"{amount} is not between 0.01 and the refundable {refundable}."
                )
            refund = Refund.objects.create(
                job=job,
                kind=kind,
                amount=amount,
                currency=job.currency,
                reason=reason,
                actor=actor,
            )
            job_manager.record_event(
                job.job_id,
                "refund_requested",
                actor=actor,
                reason=reason,
                data={"refund_id": str(refund.id), "amount": str(amount)},
            )
    if refund.status in (RefundStatus.SUCCEEDED, RefundStatus.CANCELED):
        return refund
    return send_refund(refund)


def send_refund(refund):
    backend = get_payment_backend(refund.job.payment_provider or None)
    Refund.objects.filter(pk=refund.pk).update(attempts=refund.attempts + 1)
    try:
        outcome = backend.refund(refund)
    except PaymentError as exc:
        Refund.objects.filter(pk=refund.pk).update(last_error=str(exc)[:2000])
        logger.warning(
            "event=refund_failed job_id=%s refund_id=%s transient=%s error=%s",
            refund.job.job_id,
            refund.id,
            exc.transient,
            exc,
        )
        raise
    return record_refund_outcome(refund.pk, outcome.provider_refund_id, outcome.status)


def record_refund_outcome(refund_pk, provider_refund_id, status, *, actor="system"):
    """Store what the provider says of a refund and update the job to match."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund_pk)
        job = Job.objects.select_for_update().get(pk=refund.job_id)
        previous = refund.status
        refund.provider_refund_id = provider_refund_id
        refund.status = status
        refund.save(update_fields=["provider_refund_id", "status", "updated_at"])
        if status == RefundStatus.SUCCEEDED and previous != RefundStatus.SUCCEEDED:
            refunded = (job.refund_amount or Decimal("0")) + refund.amount
            full = refunded >= job.customer_price
            fields = {
                "payment_status": PaymentStatus.REFUNDED if full else PaymentStatus.PARTIALLY_REFUNDED,
                "refunded_at": timezone.now(),
            }
            job_manager.update_cost_data(job.job_id, refund_amount=refunded, actor=actor)
            job_manager.update_job(job.job_id, actor=actor, reason=refund.reason, **fields)
            if full:
                job_manager.revoke_download_token(job.job_id, actor=actor, reason="full refund")
            job_manager.record_event(
                job.job_id,
                "refund_succeeded",
                actor=actor,
                reason=refund.reason,
                data={"refund_id": str(refund.id), "amount": str(refund.amount)},
            )
            from sellmyimages.notifications.tasks import send_refund_email

            refund_id = str(refund.id)
            transaction.on_commit(lambda: send_refund_email.enqueue(refund_id))
        elif status != previous:
            job_manager.record_event(
                job.job_id,
                f"refund_{status}",
                actor=actor,
                data={"refund_id": str(refund.id)},
            )
    return refund


def is_refundable_failure(job):
    return job.status == Status.FAILED and job.payment_status == PaymentStatus.PAID
