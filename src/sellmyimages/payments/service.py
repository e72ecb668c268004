"""Confirming payments and issuing refunds, for every payment provider.

A refund is a row written and committed before the provider is called,
and the row's id is the idempotency key of every request for it. Each
attempt at sending it first claims the attempt number on the row. In the
same transaction it enqueues a fallback attempt that runs once the lease
is over. So if a worker dies while the request is in flight, the fallback
takes over, looks for the refund at the provider, and sends it only if it
is not there. Locks are taken job first, then refund, in this module.
"""

import logging
import random
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sellmyimages.jobs.exceptions import JobValidationError
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, PaymentStatus, Status
from sellmyimages.payments.backends import get_payment_backend
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.payments.models import Refund, RefundKind, RefundStatus

logger = logging.getLogger(__name__)

# The stages of a refund in the order they happen. Stripe can report a
# refund failed or canceled after it succeeded, never the reverse.
STATUS_RANK = {
    RefundStatus.REQUESTED: 0,
    RefundStatus.PENDING: 1,
    RefundStatus.SUCCEEDED: 2,
    RefundStatus.FAILED: 3,
    RefundStatus.CANCELED: 3,
}


def confirm_payment(
    job_id, *, payment_intent_id, amount_paid, currency, email="", actor
):
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
            reason=(
                f"paid {amount_paid} {currency}, "
                f"expected {job.customer_price} {job.currency}"
            ),
        )
        raise JobValidationError(
            "amount_paid",
            f"{amount_paid} {currency} does not match the price "
            f"{job.customer_price} {job.currency}.",
        )
    return job_manager.mark_payment_completed(
        job.job_id, payment_intent_id, email=email, amount=amount_paid, actor=actor
    )


# Requesting refunds


def request_refund(
    job_id, *, amount=None, reason, kind=RefundKind.AUTOMATIC, actor="system"
):
    """Write a refund row and commit it before any provider call; return it.

    A job has at most one automatic refund: asking again returns it.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(job_id=job_id)
        if kind == RefundKind.AUTOMATIC:
            refund = Refund.objects.filter(job=job, kind=RefundKind.AUTOMATIC).first()
            if refund is not None:
                return refund
        if job.payment_status not in (
            PaymentStatus.PAID,
            PaymentStatus.PARTIALLY_REFUNDED,
        ):
            raise JobValidationError(
                "payment_status",
                f"is {job.payment_status!r}; only a paid job can be refunded.",
            )
        in_flight = Refund.objects.filter(
            job=job, status__in=[RefundStatus.REQUESTED, RefundStatus.PENDING]
        )
        already = (job.refund_amount or Decimal("0")) + sum(
            (r.amount for r in in_flight), Decimal("0")
        )
        refundable = job.customer_price - already
        amount = refundable if amount is None else Decimal(amount)
        if amount <= 0 or amount > refundable:
            raise JobValidationError(
                "amount",
                f"{amount} is not between 0.01 and the refundable {refundable}.",
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
            data={"refund_id": str(refund.id), "amount": str(amount), "kind": kind},
        )
    return refund


def refund_job(
    job_id, *, amount=None, reason, kind=RefundKind.AUTOMATIC, actor="system"
):
    """Refund a paid job once and make the first attempt now; return the Refund row.

    An automatic refund that was already requested is not sent again
    here: its own attempts and their fallbacks carry it to the end.
    """
    refund = request_refund(
        job_id, amount=amount, reason=reason, kind=kind, actor=actor
    )
    if refund.status == RefundStatus.REQUESTED and refund.attempts == 0:
        run_refund_attempt(refund.id, 1)
        refund.refresh_from_db()
    return refund


# Sending refunds


def retry_delay(attempt):
    """Return how long to wait after failed attempt number `attempt`."""
    base = settings.SMI_REFUND_RETRY_SECONDS * 4 ** (attempt - 1)
    delay = min(base, settings.SMI_REFUND_LEASE_SECONDS)
    return timedelta(seconds=delay * (0.75 + random.random() / 2))


def schedule_refund_attempt(refund_id, attempt, delay):
    from sellmyimages.payments.tasks import send_refund_attempt

    send_refund_attempt.using(run_after=timezone.now() + delay).enqueue(
        str(refund_id), attempt
    )


def claim_refund_attempt(refund_id, attempt):
    """Return the refund if this run owns attempt number `attempt`, else None.

    The claim and the fallback attempt commit together, before any
    request is sent. The block is durable, so a caller's open transaction
    raises RuntimeError here instead of delaying that commit past the
    request.
    """
    with transaction.atomic(durable=True):
        refund = (
            Refund.objects.select_for_update().select_related("job").get(pk=refund_id)
        )
        if refund.status != RefundStatus.REQUESTED or refund.attempts != attempt - 1:
            return None
        refund.attempts = attempt
        refund.save(update_fields=["attempts", "updated_at"])
        if attempt <= settings.SMI_REFUND_MAX_ATTEMPTS:
            lease = timedelta(seconds=settings.SMI_REFUND_LEASE_SECONDS)
            schedule_refund_attempt(refund.id, attempt + 1, lease)
    return refund


def run_refund_attempt(refund_id, attempt):
    """Make attempt number `attempt` at a refund; return what became of it."""
    refund = claim_refund_attempt(refund_id, attempt)
    if refund is None:
        return "not_claimed"
    backend = get_payment_backend(refund.job.payment_provider or None)
    try:
        if attempt > settings.SMI_REFUND_MAX_ATTEMPTS:
            # Only a fallback gets here: the last attempt stopped before the
            # provider's response was stored. Look for the refund, send nothing.
            outcome = find_sent_refund(backend, refund)
            if outcome is None:
                return give_up(
                    refund.pk,
                    "the last attempt stopped before the provider's answer was stored",
                )
        else:
            outcome = backend.refund(refund)
    except PaymentError as exc:
        return handle_refund_error(refund, exc, attempt)
    record_refund_outcome(
        refund.pk,
        outcome.provider_refund_id,
        outcome.status,
        actor="worker",
        state_at=timezone.now(),
    )
    return outcome.status


def send_refund(refund):
    """Make the next attempt at a refund at once; return the updated row."""
    run_refund_attempt(refund.pk, refund.attempts + 1)
    return Refund.objects.get(pk=refund.pk)


def find_sent_refund(backend, refund):
    find = getattr(backend, "find_refund", None)
    if find is None:
        return None
    found = find(refund)
    if found is None:
        return None
    from sellmyimages.payments.backends.stripe import refund_outcome

    return refund_outcome(found)


def handle_refund_error(refund, exc, attempt):
    code = getattr(exc, "code", "")
    Refund.objects.filter(pk=refund.pk).update(last_error=str(exc)[:2000])
    logger.warning(
        "event=refund_attempt_failed job_id=%s refund_id=%s attempt=%d "
        "transient=%s code=%s",
        refund.job.job_id,
        refund.id,
        attempt,
        exc.transient,
        code,
    )
    if code == "charge_already_refunded":
        return settle_already_refunded(refund, attempt)
    if code == "charge_disputed":
        flag_dispute_blocking_refund(refund)
        return give_up(
            refund.pk, "the charge is disputed, so the bank decides the refund"
        )
    if exc.transient and attempt < settings.SMI_REFUND_MAX_ATTEMPTS:
        delay = retry_delay(attempt)
        schedule_refund_attempt(refund.id, attempt + 1, delay)
        job_manager.record_event(
            refund.job.job_id,
            "refund_retry_scheduled",
            actor="worker",
            reason=str(exc)[:500],
            data={"refund_id": str(refund.id), "attempt": attempt + 1},
        )
        return "retrying"
    return give_up(refund.pk, str(exc))


def give_up(refund_pk, reason):
    """Mark a refund failed after its last attempt, and tell the admin once."""
    job_pk = Refund.objects.values_list("job_id", flat=True).get(pk=refund_pk)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_pk)
        refund = Refund.objects.select_for_update().get(pk=refund_pk)
        if refund.status != RefundStatus.REQUESTED:
            return refund.status
        refund.status = RefundStatus.FAILED
        refund.last_error = reason[:2000]
        refund.save(update_fields=["status", "last_error", "updated_at"])
        job_manager.record_event(
            job.job_id,
            "refund_failed",
            actor="worker",
            reason=reason[:500],
            data={"refund_id": str(refund.id), "attempts": refund.attempts},
        )
        notify_admin_of_refund_failure(refund)
    logger.error(
        "event=refund_gave_up job_id=%s refund_id=%s attempts=%d reason=%s",
        job.job_id,
        refund.id,
        refund.attempts,
        reason,
    )
    return "failed"


def notify_admin_of_refund_failure(refund):
    from sellmyimages.payments.tasks import notify_admin_of_refund_failure as task

    refund_id, attempts = str(refund.id), refund.attempts
    transaction.on_commit(lambda: task.enqueue(refund_id, attempts))


def retry_refund(refund_id, *, actor):
    """Send a failed refund again with a fresh set of attempts (an admin action)."""
    with transaction.atomic():
        refund = (
            Refund.objects.select_for_update().select_related("job").get(pk=refund_id)
        )
        if refund.status != RefundStatus.FAILED or refund.provider_refund_id:
            raise JobValidationError(
                "refund",
                f"is {refund.status!r} at the provider; only a refund that never "
                "reached it can be sent again.",
            )
        refund.status = RefundStatus.REQUESTED
        refund.attempts = 0
        refund.save(update_fields=["status", "attempts", "updated_at"])
        job_manager.record_event(
            refund.job.job_id,
            "refund_retry_requested",
            actor=actor,
            data={"refund_id": str(refund.id)},
        )
        schedule_refund_attempt(refund.id, 1, timedelta(0))
    return refund


def settle_already_refunded(refund, attempt):
    """Reconcile a refund Stripe rejected because the charge was refunded in full.

    Every refund on the payment is recorded, so this one is either found
    (an earlier attempt made it) or canceled, because another refund
    already returned the money.
    """
    backend = get_payment_backend(refund.job.payment_provider or None)
    try:
        apply_provider_refunds(
            refund.job.pk,
            backend.list_refunds(refund.job.payment_intent_id),
            actor="worker",
        )
    except PaymentError as exc:
        if exc.transient and attempt < settings.SMI_REFUND_MAX_ATTEMPTS:
            schedule_refund_attempt(refund.id, attempt + 1, retry_delay(attempt))
            return "retrying"
        return give_up(refund.pk, str(exc))
    refund.refresh_from_db()
    if refund.status == RefundStatus.REQUESTED:
        record_refund_outcome(
            refund.pk,
            None,
            RefundStatus.CANCELED,
            actor="worker",
            state_at=timezone.now(),
            failure_reason="charge_already_refunded",
        )
        return RefundStatus.CANCELED
    return refund.status


def flag_dispute_blocking_refund(refund):
    job_manager.record_event(
        refund.job.job_id,
        "refund_blocked_by_dispute",
        actor="worker",
        data={"refund_id": str(refund.id)},
    )


# Recording what the provider reports


def apply_provider_refunds(job_pk, provider_refunds, *, actor, state_at=None):
    """Record every refund the provider lists for a job's payment."""
    state_at = state_at or timezone.now()
    return [
        apply_provider_refund(job_pk, item, actor=actor, state_at=state_at)
        for item in provider_refunds
    ]


def apply_provider_refund(job_pk, provider_refund, *, actor, state_at):
    """Record one refund as the provider reports it; create it if it was made elsewhere.

    A refund is matched by the provider's id, then by the refund id this
    service wrote into its metadata. One with neither was made outside the
    service (in Stripe's dashboard) and gets a row of kind external.
    """
    from sellmyimages.payments.backends.stripe import REFUND_STATUSES, from_minor_units

    provider_id = provider_refund["id"]
    ours = (provider_refund.get("metadata") or {}).get("refund_id")
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_pk)
        refund = Refund.objects.filter(provider_refund_id=provider_id).first()
        if refund is None and ours:
            refund = Refund.objects.filter(job=job, pk=parse_uuid(ours)).first()
        if refund is None:
            refund = Refund.objects.create(
                job=job,
                kind=RefundKind.EXTERNAL,
                amount=from_minor_units(provider_refund["amount"]),
                currency=provider_refund.get("currency") or job.currency,
                reason=provider_refund.get("reason") or "refunded outside the service",
                actor=actor,
            )
            job_manager.record_event(
                job.job_id,
                "refund_detected",
                actor=actor,
                reason=refund.reason,
                data={"refund_id": str(refund.id), "provider_refund_id": provider_id},
            )
        return record_refund_outcome(
            refund.pk,
            provider_id,
            REFUND_STATUSES.get(provider_refund.get("status"), RefundStatus.PENDING),
            actor=actor,
            state_at=state_at,
            failure_reason=provider_refund.get("failure_reason") or "",
        )


def parse_uuid(value):
    import uuid

    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def record_refund_outcome(
    refund_pk,
    provider_refund_id,
    status,
    *,
    actor="system",
    state_at=None,
    failure_reason="",
):
    """Store a refund's status as the provider reports it; update the job to match.

    `state_at` is when the provider reported this status. A report that
    would move the refund back a stage arrived out of order and changes
    nothing. Money moves on the job only when a refund enters or leaves
    "succeeded".
    """
    job_pk = Refund.objects.values_list("job_id", flat=True).get(pk=refund_pk)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_pk)
        refund = Refund.objects.select_for_update().get(pk=refund_pk)
        previous = refund.status
        if is_stale(refund, status):
            logger.info(
                "event=refund_report_stale refund_id=%s status=%s stored=%s",
                refund.id,
                status,
                previous,
            )
            return refund
        refund.provider_refund_id = provider_refund_id or refund.provider_refund_id
        refund.status = status
        refund.provider_state_at = state_at or refund.provider_state_at
        if failure_reason:
            refund.failure_reason = failure_reason[:64]
        refund.save(
            update_fields=[
                "provider_refund_id",
                "status",
                "provider_state_at",
                "failure_reason",
                "updated_at",
            ]
        )
        if status == RefundStatus.SUCCEEDED and previous != RefundStatus.SUCCEEDED:
            add_refunded_amount(job, refund, refund.amount, actor)
        elif previous == RefundStatus.SUCCEEDED and status != RefundStatus.SUCCEEDED:
            add_refunded_amount(job, refund, -refund.amount, actor)
        elif status != previous:
            job_manager.record_event(
                job.job_id,
                f"refund_{status}",
                actor=actor,
                reason=failure_reason,
                data={"refund_id": str(refund.id)},
            )
        if (
            status in (RefundStatus.FAILED, RefundStatus.CANCELED)
            and status != previous
            and refund.kind != RefundKind.EXTERNAL
            and failure_reason != "charge_already_refunded"
        ):
            notify_admin_of_refund_failure(refund)
    return refund


def is_stale(refund, status):
    """Return True if `status` would move a provider-confirmed refund backwards.

    A refund only moves forward (requested, pending, succeeded, then failed
    or canceled), so a report of an earlier stage arrived out of order. A
    row the provider never confirmed yields to any report: "failed" there
    is this service giving up, not the provider's verdict.
    """
    if not refund.provider_refund_id:
        return False
    return STATUS_RANK[status] < STATUS_RANK[refund.status]


def add_refunded_amount(job, refund, amount, actor):
    """Move `amount` (negative for a reversed refund) onto the job's refunded total."""
    refunded = max((job.refund_amount or Decimal("0")) + amount, Decimal("0"))
    if refunded <= 0:
        payment_status = PaymentStatus.PAID
    elif refunded >= job.customer_price:
        payment_status = PaymentStatus.REFUNDED
    else:
        payment_status = PaymentStatus.PARTIALLY_REFUNDED
    job_manager.update_cost_data(job.job_id, refund_amount=refunded, actor=actor)
    job_manager.update_job(
        job.job_id,
        actor=actor,
        reason=refund.reason,
        payment_status=payment_status,
        refunded_at=timezone.now() if amount > 0 else job.refunded_at,
    )
    data = {"refund_id": str(refund.id), "amount": str(abs(amount))}
    if amount < 0:
        job_manager.record_event(
            job.job_id,
            "refund_reversed",
            actor=actor,
            reason=refund.failure_reason,
            data=data,
        )
        return
    if payment_status == PaymentStatus.REFUNDED:
        job_manager.revoke_download_token(job.job_id, actor=actor, reason="full refund")
        if job.status in (Status.PENDING, Status.PROCESSING):
            # The customer has their money back, so the image must not be
            # delivered; failing the job stops the pipeline at its next step.
            job_manager.mark_failed(
                job.job_id,
                "payment_refunded",
                detail="The payment was refunded in full before the image was delivered.",
                actor=actor,
            )
    job_manager.record_event(
        job.job_id, "refund_succeeded", actor=actor, reason=refund.reason, data=data
    )
    from sellmyimages.notifications.tasks import send_refund_email

    refund_id = str(refund.id)
    transaction.on_commit(lambda: send_refund_email.enqueue(refund_id))


# Fees


def record_payment_fee(job_id):
    """Store the provider's fee for a job's payment; return what happened."""
    job = job_manager.get_job(job_id)
    if job.payment_fee is not None:
        return "already_recorded"
    if not job.payment_intent_id or job.payment_provider != "stripe":
        return "not_applicable"
    fee = get_payment_backend("stripe").payment_fee(job.payment_intent_id)
    if fee is None:
        return "not_settled"
    job_manager.update_cost_data(job.job_id, payment_fee=fee, actor="worker")
    logger.info("event=payment_fee_recorded job_id=%s fee=%s", job.job_id, fee)
    return "recorded"


def is_refundable_failure(job):
    return job.status == Status.FAILED and job.payment_status == PaymentStatus.PAID
