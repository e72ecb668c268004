"""The interface every payment provider implements."""

from dataclasses import dataclass


class PaymentError(Exception):
    """A payment provider request failed; `transient` says whether to retry."""

    def __init__(self, message, *, transient):
        self.transient = transient
        super().__init__(message)


@dataclass(frozen=True)
class CheckoutSession:
    session_id: str
    url: str


@dataclass(frozen=True)
class RefundOutcome:
    provider_refund_id: str
    # One of RefundStatus' values: pending, succeeded, failed or canceled.
    status: str


class PaymentBackend:
    name = ""

    def start_checkout(self, job):
        """Create a checkout for the job's server-side price; return a CheckoutSession."""
        raise NotImplementedError

    def refund(self, refund):
        """Refund `refund.amount`, using `refund.id` as the idempotency key."""
        raise NotImplementedError

    def is_session_paid(self, job):
        """Return whether the job's checkout was paid: True, False, or None if unknown.

        The abandonment sweep asks before abandoning an unpaid job, so that
        a payment whose confirmation never arrived is not thrown away.
        None (the provider could not be asked) keeps the job as it is.
        """
        return None
