"""Payment providers behind one interface, chosen by SMI_PAYMENT_PROVIDER."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def get_payment_backend(name=None):
    name = name or settings.SMI_PAYMENT_PROVIDER
    if name == "local":
        from sellmyimages.payments.backends.local import LocalCheckoutBackend

        return LocalCheckoutBackend()
    raise ImproperlyConfigured(
        f"SMI_PAYMENT_PROVIDER={name!r} is not a known payment provider; use 'local'."
    )
