"""Payment providers behind one interface, chosen by SMI_PAYMENT_PROVIDER."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")


def get_payment_backend(name=None):
    name = name or settings.SMI_PAYMENT_PROVIDER
    if name == "local":
        from sellmyimages.payments.backends.local import LocalCheckoutBackend

        return LocalCheckoutBackend()
    if name == "stripe":
        from sellmyimages.payments.backends.stripe import StripeBackend

        return StripeBackend()
    raise ImproperlyConfigured(
        f"SMI_PAYMENT_PROVIDER={name!r} is not a known payment provider; "
        "use 'local' or 'stripe'."
    )


def payments_in_test_mode():
    """Return True when no real money moves: the local checkout or a Stripe test key."""
    if settings.SMI_PAYMENT_PROVIDER == "local":
        return True
    if settings.SMI_PAYMENT_PROVIDER == "stripe":
        return settings.STRIPE_SECRET_KEY.startswith(TEST_KEY_PREFIXES)
    return False


def describe_payment_setup():
    """Return the line `smi serve` prints once at start-up about how payments run."""
    if settings.SMI_PAYMENT_PROVIDER == "local":
        return (
            "Payments use the local test checkout: no money moves. "
            "Set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET to take real payments."
        )
    if settings.SMI_PAYMENT_PROVIDER != "stripe":
        return f"Payments use {settings.SMI_PAYMENT_PROVIDER}."
    mode = "test mode: no money moves" if payments_in_test_mode() else "live mode"
    line = f"Payments use Stripe in {mode}."
    if not settings.STRIPE_WEBHOOK_SECRET:
        line += (
            " STRIPE_WEBHOOK_SECRET is not set, so /webhooks/stripe answers 503 "
            "and payments are confirmed only by the success page and "
            "`smi payments reconcile`."
        )
    return line
