"""The local test checkout: the service's own payment page, no money moves.

It exists so that an embedded installation can run the whole purchase
on one machine. Paying on its page calls the same confirm_payment path a
real provider's confirmation takes. It refuses to work unless test mode
is on, so a production shop cannot be paid with it by accident.
"""

import secrets

from django.conf import settings
from django.urls import reverse

from sellmyimages.jobs.models import PaymentStatus
from sellmyimages.payments.backends.base import (
    CheckoutSession,
    PaymentBackend,
    PaymentError,
    RefundOutcome,
)


def require_test_mode():
    if not settings.SMI_TEST_MODE:
        raise PaymentError(
            "The local test checkout is disabled because SMI_TEST_MODE is off; "
            "configure a real payment provider.",
            transient=False,
        )


class LocalCheckoutBackend(PaymentBackend):
    name = "local"

    def start_checkout(self, job):
        require_test_mode()
        session_id = f"lcs_{secrets.token_hex(16)}"
        path = reverse("payments:local-checkout", args=[session_id])
        return CheckoutSession(session_id=session_id, url=f"{settings.PUBLIC_BASE_URL}{path}")

    def refund(self, refund):
        require_test_mode()
        return RefundOutcome(provider_refund_id=f"lre_{refund.id.hex}", status="succeeded")

    def is_session_paid(self, job):
        # The local checkout page confirms a payment in the same request
        # that takes it, so the job's own record is complete.
        return job.payment_status != PaymentStatus.UNPAID
