"""Stripe Checkout, refunds and fees through the official stripe library.

Every call goes through one StripeClient whose API base comes from
SMI_STRIPE_API_BASE, so tests can point it at a fake Stripe on loopback.
Results are returned as plain dicts, the same shape a webhook delivers,
so the webhook handlers and the API callers share one code path.
"""

import functools
import logging
from contextlib import contextmanager
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import stripe
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from sellmyimages.jobs.pricing import CENT, to_minor_units
from sellmyimages.payments.backends import TEST_KEY_PREFIXES
from sellmyimages.payments.backends.base import (
    CheckoutSession,
    PaymentBackend,
    PaymentError,
    RefundOutcome,
)

logger = logging.getLogger(__name__)

# Stripe accepts a Checkout Session expiry from 30 minutes to 24 hours after
# creation (stripe-python 16.1, SessionCreateParams.expires_at). Stripe
# measures on its own clock, so a minute of margin keeps a slightly skewed
# clock here from producing an expiry it rejects.
MIN_SESSION_LIFETIME = timedelta(minutes=31)
MAX_SESSION_LIFETIME = timedelta(hours=24) - timedelta(minutes=1)

# Stripe's refund statuses mapped to RefundStatus values. A refund that
# requires action is still waiting at Stripe, like a pending one.
REFUND_STATUSES = {
    "pending": "pending",
    "requires_action": "pending",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
}

# Refund errors that no retry can change: the charge was refunded in full
# already, or a dispute now decides where the money goes.
FINAL_REFUND_ERRORS = {"charge_already_refunded", "charge_disputed"}

# Stripe's limits on metadata values (stripe-python 16.1 docstrings).
METADATA_VALUE_MAX = 500


class StripeRequestError(PaymentError):
    """A Stripe request failed; `code` is Stripe's error code, if it sent one."""

    def __init__(self, message, *, transient, code="", http_status=None):
        self.code = code or ""
        self.http_status = http_status
        super().__init__(message, transient=transient)


def key_mode(key):
    """Return "test" or "live" for a Stripe secret or restricted key, else ""."""
    if key.startswith(TEST_KEY_PREFIXES):
        return "test"
    if key.startswith(("sk_live_", "rk_live_")):
        return "live"
    return ""


@functools.lru_cache(maxsize=4)
def make_client(api_key, api_base, max_network_retries, timeout):
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base},
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def stripe_client():
    """Return the StripeClient configured by the settings, shared per process."""
    return make_client(
        settings.STRIPE_SECRET_KEY,
        settings.SMI_STRIPE_API_BASE,
        settings.SMI_STRIPE_MAX_NETWORK_RETRIES,
        settings.SMI_STRIPE_TIMEOUT_SECONDS,
    )


def is_transient(exc):
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        return True
    status = exc.http_status
    return status is None or status >= 500 or status in (409, 429)


@contextmanager
def stripe_errors(action):
    """Turn the library's errors into StripeRequestError, saying whether to retry."""
    try:
        yield
    except stripe.SignatureVerificationError:
        raise
    except stripe.StripeError as exc:
        transient = is_transient(exc)
        logger.warning(
            "event=stripe_request_failed action=%s status=%s code=%s transient=%s "
            "request_id=%s error=%s",
            action,
            exc.http_status,
            exc.code,
            transient,
            exc.request_id,
            exc.user_message,
        )
        raise StripeRequestError(
            f"Stripe {action} failed: {exc.user_message or type(exc).__name__}",
            transient=transient,
            code=exc.code or "",
            http_status=exc.http_status,
        ) from exc


def as_dict(value):
    if isinstance(value, stripe.StripeObject):
        return value.to_dict()
    return value


def object_id(value):
    """Return the id of an expandable field, which is an id or an object."""
    if isinstance(value, dict):
        return value.get("id")
    return value


def from_minor_units(amount):
    """Convert Stripe's integer amount in a two-decimal currency to a Decimal."""
    return (Decimal(int(amount)) / 100).quantize(CENT)


def session_lifetime():
    wanted = timedelta(hours=settings.SMI_ABANDON_AFTER_HOURS)
    return min(max(wanted, MIN_SESSION_LIFETIME), MAX_SESSION_LIFETIME)


def success_url(job):
    url = settings.SMI_STRIPE_SUCCESS_URL or (
        settings.PUBLIC_BASE_URL
        + reverse("payments:stripe-success")
        + "?session_id={CHECKOUT_SESSION_ID}"
    )
    return url.replace("{JOB_ID}", str(job.job_id))


def cancel_url(job):
    url = settings.SMI_STRIPE_CANCEL_URL or (
        settings.PUBLIC_BASE_URL + reverse("payments:stripe-cancel", args=[job.job_id])
    )
    return url.replace("{JOB_ID}", str(job.job_id))


def checkout_params(job, now=None):
    """Build the Checkout Session request for a job's server-side price."""
    now = now or timezone.now()
    job_id = str(job.job_id)
    output = f"{job.source_width * job.factor} x {job.source_height * job.factor} px"
    params = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": job.currency,
                    "unit_amount": to_minor_units(job.customer_price),
                    "product_data": {
                        "name": f"Upscaled image, {job.resolution}",
                        "description": (
                            f"A {job.resolution} upscale delivered as {output}."
                        ),
                    },
                },
            }
        ],
        "client_reference_id": job_id,
        "metadata": {"job_id": job_id},
        # Session metadata stays on the session; the payment intent gets its
        # own copy so that refunds and disputes can be traced to the job.
        "payment_intent_data": {"metadata": {"job_id": job_id}},
        "expires_at": int((now + session_lifetime()).timestamp()),
        "success_url": success_url(job),
        "cancel_url": cancel_url(job),
    }
    if job.email:
        params["customer_email"] = job.email
    return params


def refund_outcome(refund_object):
    return RefundOutcome(
        provider_refund_id=refund_object["id"],
        status=REFUND_STATUSES.get(refund_object.get("status"), "pending"),
    )


def fee_in_charge_currency(balance_transaction, charge_currency):
    """Return Stripe's fee for a charge as a Decimal in the charge's currency.

    The balance transaction is in the account's settlement currency; when
    that differs, its exchange_rate (settlement per charge unit) converts
    the fee back, rounded half-up to the cent.
    """
    fee = from_minor_units(balance_transaction["fee"])
    if balance_transaction.get("currency", charge_currency) == charge_currency:
        return fee
    rate = balance_transaction.get("exchange_rate")
    if not rate:
        return None
    return (fee / Decimal(str(rate))).quantize(CENT, rounding=ROUND_HALF_UP)


class StripeBackend(PaymentBackend):
    name = "stripe"

    def __init__(self, client=None):
        self.client = client or stripe_client()

    def start_checkout(self, job):
        params = checkout_params(job)
        with stripe_errors("checkout session creation"):
            session = self.client.v1.checkout.sessions.create(
                params, {"idempotency_key": f"checkout-{job.job_id}"}
            )
        logger.info(
            "event=stripe_checkout_created job_id=%s session_id=%s",
            job.job_id,
            session.id,
        )
        return CheckoutSession(session_id=session.id, url=session.url)

    def retrieve_session(self, session_id):
        with stripe_errors("checkout session retrieval"):
            return as_dict(self.client.v1.checkout.sessions.retrieve(session_id))

    def is_session_paid(self, job):
        """Return whether the job's session was paid, or None if Stripe cannot say."""
        if not job.checkout_session_id:
            return None
        try:
            session = self.retrieve_session(job.checkout_session_id)
        except PaymentError:
            return None
        return session.get("payment_status") == "paid"

    def list_sessions(self, created_since):
        """Yield every Checkout Session created at or after `created_since`."""
        params = {"created": {"gte": int(created_since.timestamp())}, "limit": 100}
        with stripe_errors("checkout session listing"):
            for session in self.client.v1.checkout.sessions.list(
                params
            ).auto_paging_iter():
                yield as_dict(session)

    def retrieve_payment_intent(self, payment_intent_id):
        """Return a payment intent with its charge and balance transaction."""
        with stripe_errors("payment intent retrieval"):
            return as_dict(
                self.client.v1.payment_intents.retrieve(
                    payment_intent_id, {"expand": ["latest_charge.balance_transaction"]}
                )
            )

    def payment_fee(self, payment_intent_id):
        """Return Stripe's fee for a payment, or None until Stripe settles it."""
        payment_intent = self.retrieve_payment_intent(payment_intent_id)
        charge = payment_intent.get("latest_charge")
        if not isinstance(charge, dict):
            return None
        transaction = charge.get("balance_transaction")
        if not isinstance(transaction, dict):
            return None
        return fee_in_charge_currency(transaction, charge.get("currency"))

    def list_refunds(self, payment_intent_id):
        with stripe_errors("refund listing"):
            listing = self.client.v1.refunds.list(
                {"payment_intent": payment_intent_id, "limit": 100}
            )
            return [as_dict(refund) for refund in listing.auto_paging_iter()]

    def retrieve_refund(self, provider_refund_id):
        with stripe_errors("refund retrieval"):
            return as_dict(self.client.v1.refunds.retrieve(provider_refund_id))

    def find_refund(self, refund):
        """Return the Stripe refund an earlier attempt created for `refund`, or None."""
        for candidate in self.list_refunds(refund.job.payment_intent_id):
            if (candidate.get("metadata") or {}).get("refund_id") == str(refund.id):
                return candidate
        return None

    def refund(self, refund):
        """Refund `refund.amount` of the job's payment, at most once.

        The refund's id is the idempotency key of every request. Stripe
        forgets keys after a day, so a repeated attempt first looks for a
        refund carrying this id in its metadata before asking again.
        """
        job = refund.job
        if not job.payment_intent_id:
            raise StripeRequestError(
                f"Job {job.job_id} has no Stripe payment intent to refund.",
                transient=False,
            )
        if refund.attempts > 1:
            existing = self.find_refund(refund)
            if existing is not None:
                logger.info(
                    "event=stripe_refund_found refund_id=%s provider_refund_id=%s",
                    refund.id,
                    existing["id"],
                )
                return refund_outcome(existing)
        params = {
            "payment_intent": job.payment_intent_id,
            "amount": to_minor_units(refund.amount),
            "metadata": {
                "refund_id": str(refund.id),
                "job_id": str(job.job_id),
                "reason": refund.reason[:METADATA_VALUE_MAX],
            },
        }
        with stripe_errors("refund"):
            created = self.client.v1.refunds.create(
                params, {"idempotency_key": str(refund.id)}
            )
        logger.info(
            "event=stripe_refund_sent refund_id=%s provider_refund_id=%s status=%s",
            refund.id,
            created.id,
            created.status,
        )
        return refund_outcome(as_dict(created))
