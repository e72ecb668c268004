"""Stripe webhook events: verified, stored once, processed where they are stored.

An event row and every job change its processing causes commit in one
transaction. Stripe delivers events at least once and in any order, so
every handler re-reads the job under a row lock and acts only on the
job's current state: a repeated or late event changes nothing. A handler
that raises leaves the event marked failed, and the endpoint returns 500
so that Stripe delivers it again.
"""

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sellmyimages.jobs.exceptions import JobValidationError
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, PaymentStatus, Status
from sellmyimages.payments.backends import get_payment_backend
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.payments.backends.stripe import from_minor_units, key_mode, object_id
from sellmyimages.payments.models import Dispute, EventOutcome, Refund, StripeEvent
from sellmyimages.payments.service import (
    apply_provider_refund,
    apply_provider_refunds,
    confirm_payment,
)

logger = logging.getLogger(__name__)

# Outcomes after which a repeated delivery of the same event does nothing.
SETTLED_OUTCOMES = {EventOutcome.PROCESSED, EventOutcome.IGNORED}


@dataclass(frozen=True)
class Handled:
    outcome: str
    detail: str
    job: Job | None = None


def verify_event(payload, signature):
    """Check the Stripe-Signature header over the raw body; return the event as a dict.

    Raises stripe.SignatureVerificationError for a missing, wrong or stale
    signature (stripe-python's default tolerance, 300 seconds) and
    ValueError for a body that is not a JSON event.
    """
    try:
        stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError:
        raise
    except Exception as exc:
        # The library builds an Event object after checking the signature
        # and fails in several ways on a signed body of the wrong shape.
        raise ValueError("The webhook body is not a Stripe event.") from exc
    event = json.loads(payload)
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not 0 < len(event["id"]) <= 255
        or not isinstance(event.get("data", {}), dict)
    ):
        raise ValueError("The webhook body is not a Stripe event.")
    try:
        event_time(event)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise ValueError("The webhook event's 'created' time is invalid.") from exc
    return event


def event_time(event):
    return datetime.fromtimestamp(int(event.get("created") or 0), tz=UTC)


def receive_event(event, *, actor="webhook"):
    """Store a verified event once and process it; return (row, duplicate)."""
    with transaction.atomic():
        row, _created = StripeEvent.objects.get_or_create(
            event_id=event["id"],
            defaults={
                "event_type": str(event.get("type", ""))[:100],
                "livemode": bool(event.get("livemode")),
                "created": event_time(event),
                "payload": event,
            },
        )
        row = StripeEvent.objects.select_for_update().get(pk=row.pk)
        if row.outcome in SETTLED_OUTCOMES:
            logger.info(
                "event=stripe_event_duplicate event_id=%s type=%s",
                row.event_id,
                row.event_type,
            )
            return row, True
        process_stored_event(row, actor=actor)
    return row, False


def reprocess_event(row_pk, *, actor):
    """Run a stored event's handler again (an admin action); return the row."""
    with transaction.atomic():
        row = StripeEvent.objects.select_for_update().get(pk=row_pk)
        process_stored_event(row, actor=actor)
    return row


def process_stored_event(row, *, actor):
    """Run the handler in a savepoint and record its outcome on the locked row."""
    row.attempts += 1
    try:
        with transaction.atomic():
            handled = dispatch(row.payload, actor=actor)
    except Exception as exc:  # recorded and returned as 500, so Stripe retries
        logger.exception(
            "event=stripe_event_failed event_id=%s type=%s",
            row.event_id,
            row.event_type,
        )
        row.outcome = EventOutcome.FAILED
        row.detail = f"{type(exc).__name__}: {exc}"[:4000]
    else:
        row.outcome = handled.outcome
        row.detail = handled.detail[:4000]
        row.job = handled.job
        row.processed_at = timezone.now()
        logger.info(
            "event=stripe_event_processed event_id=%s type=%s outcome=%s "
            "job_id=%s detail=%s",
            row.event_id,
            row.event_type,
            row.outcome,
            handled.job.job_id if handled.job else "-",
            handled.detail,
        )
    row.save()


def dispatch(event, *, actor):
    event_type = event.get("type", "")
    handler = HANDLERS.get(event_type)
    if handler is None:
        return Handled(
            EventOutcome.IGNORED, f"{event_type!r} is not an event type the shop uses"
        )
    mode = key_mode(settings.STRIPE_SECRET_KEY)
    if mode and bool(event.get("livemode")) != (mode == "live"):
        return Handled(
            EventOutcome.IGNORED,
            f"a {'live' if event.get('livemode') else 'test'} event "
            f"for a {mode} key",
        )
    data = event.get("data") or {}
    return handler(data.get("object") or {}, event=event, actor=actor)


# Finding the job


def parse_uuid(value):
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def locked_job(**lookup):
    return Job.objects.select_for_update().filter(**lookup).first()


def job_for_session(session):
    """Return the session's job, locked; found by session id, then by metadata."""
    job = locked_job(checkout_session_id=session.get("id"))
    if job is not None:
        return job
    reference = (session.get("metadata") or {}).get("job_id") or session.get(
        "client_reference_id"
    )
    job_id = parse_uuid(reference) if reference else None
    return locked_job(job_id=job_id) if job_id else None


class PaymentNotRecordedYet(Exception):
    """An event about a payment arrived before the event that records the payment."""


def job_for_payment(payment_intent_id, metadata=None):
    """Return the job a payment intent paid, locked; by its id, then by metadata.

    A payment intent unknown here is looked up at Stripe, whose copy of
    the checkout's metadata names the job. If that job's payment is not
    recorded yet, the event came first: PaymentNotRecordedYet makes the
    endpoint return 500, so Stripe delivers it again after the payment.
    """
    if payment_intent_id:
        job = locked_job(payment_intent_id=payment_intent_id)
        if job is not None:
            return job
    job_id = parse_uuid((metadata or {}).get("job_id", ""))
    if job_id is None and payment_intent_id:
        job_id = job_id_at_stripe(payment_intent_id)
    job = locked_job(job_id=job_id) if job_id else None
    if (
        job is not None
        and payment_intent_id
        and job.payment_status == PaymentStatus.UNPAID
    ):
        raise PaymentNotRecordedYet(
            f"Job {job.job_id} has no recorded payment yet for {payment_intent_id}."
        )
    return job


def job_id_at_stripe(payment_intent_id):
    try:
        payment_intent = get_payment_backend("stripe").retrieve_payment_intent(
            payment_intent_id
        )
    except PaymentError as exc:
        if exc.transient:
            raise
        return None
    return parse_uuid((payment_intent.get("metadata") or {}).get("job_id", ""))


def unknown_job(kind, object_id_value):
    logger.warning(
        "event=stripe_event_unknown_job object=%s id=%s", kind, object_id_value
    )
    return Handled(EventOutcome.IGNORED, f"no job for {kind} {object_id_value}")


# Checkout Sessions


def apply_checkout_session(session, *, actor):
    """Move a job on from its Checkout Session's state; safe to repeat.

    The webhook, the success page and reconciliation all call this, so a
    payment is recorded by whichever comes first and the others find it
    done.
    """
    job = job_for_session(session)
    if job is None:
        return unknown_job("checkout session", session.get("id"))
    email = customer_email(session)
    if session.get("payment_status") != "paid":
        if email and not job.email:
            job_manager.update_job(
                job.job_id, email=email, actor=actor, reason="from checkout"
            )
        if job.payment_status == PaymentStatus.UNPAID:
            job_manager.record_event(
                job.job_id,
                "payment_awaiting_async",
                actor=actor,
                reason="checkout completed",
            )
        return Handled(
            EventOutcome.PROCESSED, "checkout completed; the payment is pending", job
        )
    return record_paid_session(job, session, email, actor)


def customer_email(session):
    email = (session.get("customer_details") or {}).get("email") or ""
    try:
        return job_manager.validate_email(email)
    except JobValidationError:
        return ""


def record_paid_session(job, session, email, actor):
    payment_intent_id = (
        object_id(session.get("payment_intent")) or f"cs:{session['id']}"
    )
    if job.payment_status != PaymentStatus.UNPAID:
        if job.payment_intent_id == payment_intent_id:
            return Handled(
                EventOutcome.PROCESSED, "the payment was already recorded", job
            )
        job_manager.record_event(
            job.job_id,
            "payment_conflict",
            actor=actor,
            reason=f"session {session['id']} paid a job that is {job.payment_status}",
            data={"payment_intent_id": payment_intent_id},
        )
        logger.error(
            "event=stripe_payment_conflict job_id=%s session_id=%s payment_status=%s",
            job.job_id,
            session["id"],
            job.payment_status,
        )
        return Handled(
            EventOutcome.IGNORED, f"the job is already {job.payment_status}", job
        )
    try:
        confirm_payment(
            job.job_id,
            payment_intent_id=payment_intent_id,
            amount_paid=from_minor_units(session.get("amount_total") or 0),
            currency=session.get("currency") or "",
            email=email,
            actor=actor,
        )
    except JobValidationError as exc:
        return Handled(EventOutcome.IGNORED, f"payment not recorded: {exc}", job)
    from sellmyimages.payments.tasks import record_payment_fee

    job_id = str(job.job_id)
    transaction.on_commit(lambda: record_payment_fee.enqueue(job_id))
    return Handled(EventOutcome.PROCESSED, "payment recorded", job)


def on_session_completed(session, *, event, actor):
    return apply_checkout_session(session, actor=actor)


def on_async_payment_failed(session, *, event, actor):
    job = job_for_session(session)
    if job is None:
        return unknown_job("checkout session", session.get("id"))
    if job.payment_status != PaymentStatus.UNPAID:
        return Handled(
            EventOutcome.PROCESSED,
            f"nothing to do: the job is {job.payment_status}",
            job,
        )
    reason = "the delayed payment failed"
    if job.status == Status.AWAITING_PAYMENT:
        job_manager.update_status(
            job.job_id,
            Status.ABANDONED,
            actor=actor,
            reason=reason,
            expected_status=Status.AWAITING_PAYMENT,
            payment_status=PaymentStatus.FAILED,
        )
    else:
        job_manager.update_job(
            job.job_id, actor=actor, reason=reason, payment_status=PaymentStatus.FAILED
        )
    return Handled(EventOutcome.PROCESSED, "payment failed; job closed", job)


def on_session_expired(session, *, event, actor):
    job = job_for_session(session)
    if job is None:
        return unknown_job("checkout session", session.get("id"))
    if (
        job.status != Status.AWAITING_PAYMENT
        or job.payment_status != PaymentStatus.UNPAID
    ):
        return Handled(
            EventOutcome.PROCESSED,
            f"nothing to do: the job is {job.status} and {job.payment_status}",
            job,
        )
    job_manager.update_status(
        job.job_id,
        Status.ABANDONED,
        actor=actor,
        reason="checkout session expired",
        expected_status=Status.AWAITING_PAYMENT,
    )
    return Handled(EventOutcome.PROCESSED, "checkout expired; job abandoned", job)


# Refunds and disputes


def on_charge_refunded(charge, *, event, actor):
    payment_intent_id = object_id(charge.get("payment_intent"))
    job = job_for_payment(payment_intent_id, charge.get("metadata"))
    if job is None:
        return unknown_job("charge", charge.get("id"))
    # Newer API versions leave the refunds out of the charge, so the list
    # comes from Stripe; it is the current state, whatever the event order.
    backend = get_payment_backend("stripe")
    refunds = apply_provider_refunds(
        job.pk,
        backend.list_refunds(job.payment_intent_id or payment_intent_id),
        actor=actor,
    )
    return Handled(EventOutcome.PROCESSED, f"{len(refunds)} refund(s) recorded", job)


def on_refund_changed(provider_refund, *, event, actor):
    metadata = provider_refund.get("metadata") or {}
    job = job_for_payment(object_id(provider_refund.get("payment_intent")), metadata)
    if job is None and metadata.get("refund_id"):
        ours = Refund.objects.filter(pk=parse_uuid(metadata["refund_id"])).first()
        job = locked_job(pk=ours.job_id) if ours else None
    if job is None:
        return unknown_job("refund", provider_refund.get("id"))
    refund = apply_provider_refund(
        job.pk, provider_refund, actor=actor, state_at=event_time(event)
    )
    return Handled(
        EventOutcome.PROCESSED, f"refund {refund.id} is {refund.status}", job
    )


def on_dispute_created(dispute, *, event, actor):
    job = job_for_payment(
        object_id(dispute.get("payment_intent")), dispute.get("metadata")
    )
    if job is None:
        return unknown_job("dispute", dispute.get("id"))
    row, created = Dispute.objects.get_or_create(
        dispute_id=dispute["id"],
        defaults={
            "job": job,
            "amount": from_minor_units(dispute.get("amount") or 0),
            "currency": dispute.get("currency") or job.currency,
            "reason": (dispute.get("reason") or "")[:64],
            "status": (dispute.get("status") or "")[:32],
        },
    )
    if not created:
        return Handled(EventOutcome.PROCESSED, "dispute already recorded", job)
    job_manager.record_event(
        job.job_id,
        "dispute_opened",
        actor=actor,
        reason=row.reason,
        data={
            "dispute_id": row.dispute_id,
            "amount": str(row.amount),
            "status": row.status,
        },
    )
    from sellmyimages.payments.tasks import notify_admin_of_dispute

    transaction.on_commit(lambda: notify_admin_of_dispute.enqueue(row.pk))
    logger.warning(
        "event=stripe_dispute_opened job_id=%s dispute_id=%s reason=%s",
        job.job_id,
        row.dispute_id,
        row.reason,
    )
    return Handled(EventOutcome.PROCESSED, "dispute recorded; admin told", job)


HANDLERS = {
    "checkout.session.completed": on_session_completed,
    "checkout.session.async_payment_succeeded": on_session_completed,
    "checkout.session.async_payment_failed": on_async_payment_failed,
    "checkout.session.expired": on_session_expired,
    "charge.refunded": on_charge_refunded,
    "refund.created": on_refund_changed,
    "refund.updated": on_refund_changed,
    "refund.failed": on_refund_changed,
    "charge.refund.updated": on_refund_changed,
    "charge.dispute.created": on_dispute_created,
}
