"""Compare jobs with Stripe and repair what a lost webhook left behind.

It reads the Checkout Sessions created in the last N days, the payment
intents of the jobs paid in that time, and the refunds still open, and
moves each job through the same idempotent paths the webhook handlers
use. Running it twice, or while webhooks arrive, changes nothing more.
"""

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, PaymentStatus, Status
from sellmyimages.jobs.pricing import to_minor_units
from sellmyimages.payments.backends import get_payment_backend
from sellmyimages.payments.backends.stripe import (
    REFUND_STATUSES,
    fee_in_charge_currency,
)
from sellmyimages.payments.models import Refund, RefundStatus
from sellmyimages.payments.service import (
    apply_provider_refund,
    apply_provider_refunds,
    schedule_refund_attempt,
)
from sellmyimages.payments.stripe_webhooks import (
    apply_checkout_session,
    job_for_session,
    on_session_expired,
)

logger = logging.getLogger(__name__)

ACTOR = "reconcile"
NO_CHANGE = "none"


@dataclass
class Finding:
    kind: str
    stripe_id: str
    job_id: str
    found: str
    action: str = NO_CHANGE

    @property
    def changed(self):
        return self.action != NO_CHANGE

    def as_dict(self):
        return {**asdict(self), "changed": self.changed}


def reconcile(days=7, *, dry_run=False, backend=None, now=None):
    """Check the last `days` days against Stripe; return a Finding for each object."""
    backend = backend or get_payment_backend("stripe")
    since = (now or timezone.now()) - timedelta(days=days)
    findings = [
        check_session(session, dry_run) for session in backend.list_sessions(since)
    ]
    # Open refunds come before payments, so that a payment's refunded total
    # is compared once its own refunds are up to date.
    open_refunds = Refund.objects.filter(
        job__payment_provider="stripe",
        status__in=[RefundStatus.REQUESTED, RefundStatus.PENDING],
    ).select_related("job")
    findings += [check_refund(refund, backend, dry_run) for refund in open_refunds]
    paid = Job.objects.filter(
        payment_provider="stripe",
        payment_intent_id__startswith="pi_",
        paid_at__gte=since,
    ).order_by("paid_at")
    findings += [check_payment(job, backend, dry_run) for job in paid]
    changed = sum(finding.changed for finding in findings)
    logger.info(
        "event=reconcile_finished days=%d checked=%d changed=%d dry_run=%s",
        days,
        len(findings),
        changed,
        dry_run,
    )
    return findings


def check_session(session, dry_run):
    found = f"session {session.get('status')}, {session.get('payment_status')}"
    with transaction.atomic():
        job = job_for_session(session)
        if job is None:
            return Finding("session", session["id"], "-", f"{found}; no job")
        finding = Finding(
            "session",
            session["id"],
            str(job.job_id),
            f"{found}; job {job.status}, {job.payment_status}",
        )
        unpaid = job.payment_status == PaymentStatus.UNPAID
        if session.get("payment_status") == "paid" and unpaid:
            finding.action = (
                "would record the payment" if dry_run else "payment recorded"
            )
            if not dry_run:
                handled = apply_checkout_session(session, actor=ACTOR)
                if handled.job is None or handled.detail != "payment recorded":
                    finding.action = f"payment not recorded: {handled.detail}"
        elif (
            session.get("status") == "expired"
            and job.status == Status.AWAITING_PAYMENT
            and unpaid
        ):
            finding.action = "would abandon the job" if dry_run else "job abandoned"
            if not dry_run:
                on_session_expired(session, event=None, actor=ACTOR)
    return finding


def check_payment(job, backend, dry_run):
    payment_intent = backend.retrieve_payment_intent(job.payment_intent_id)
    charge = payment_intent.get("latest_charge")
    charge = charge if isinstance(charge, dict) else {}
    refunded = int(charge.get("amount_refunded") or 0)
    finding = Finding(
        "payment",
        job.payment_intent_id,
        str(job.job_id),
        f"{payment_intent.get('status')}, refunded {refunded} of {charge.get('amount')}"
        + ("; disputed" if charge.get("disputed") else ""),
    )
    actions = []
    transaction_data = charge.get("balance_transaction")
    if job.payment_fee is None and isinstance(transaction_data, dict):
        fee = fee_in_charge_currency(transaction_data, charge.get("currency"))
        if fee is not None:
            actions.append(
                f"would record fee {fee}" if dry_run else f"fee {fee} recorded"
            )
            if not dry_run:
                job_manager.update_cost_data(job.job_id, payment_fee=fee, actor=ACTOR)
    if refunded != to_minor_units(job.refund_amount or 0):
        actions.append("would record refunds" if dry_run else "refunds recorded")
        if not dry_run:
            apply_provider_refunds(
                job.pk, backend.list_refunds(job.payment_intent_id), actor=ACTOR
            )
    if actions:
        finding.action = "; ".join(actions)
    return finding


def check_refund(refund, backend, dry_run):
    finding = Finding(
        "refund",
        refund.provider_refund_id or "-",
        str(refund.job.job_id),
        f"refund {refund.id} {refund.status} after {refund.attempts} attempt(s)",
    )
    if refund.provider_refund_id:
        current = backend.retrieve_refund(refund.provider_refund_id)
        status = REFUND_STATUSES.get(current.get("status"), RefundStatus.PENDING)
        if status != refund.status:
            finding.action = (
                f"would record {status}" if dry_run else f"recorded {status}"
            )
            if not dry_run:
                apply_provider_refund(
                    refund.job.pk, current, actor=ACTOR, state_at=timezone.now()
                )
        return finding
    sent = backend.find_refund(refund)
    if sent is not None:
        finding.stripe_id = sent["id"]
        finding.action = (
            "would record it" if dry_run else f"recorded {sent.get('status')}"
        )
        if not dry_run:
            apply_provider_refund(
                refund.job.pk, sent, actor=ACTOR, state_at=timezone.now()
            )
        return finding
    lease = timedelta(seconds=settings.SMI_REFUND_LEASE_SECONDS)
    if refund.updated_at < timezone.now() - lease:
        attempt = refund.attempts + 1
        finding.action = (
            f"would schedule attempt {attempt}"
            if dry_run
            else f"attempt {attempt} scheduled"
        )
        if not dry_run:
            schedule_refund_attempt(refund.id, attempt, timedelta(0))
    return finding
