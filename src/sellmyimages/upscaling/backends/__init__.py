"""Upscaling engines behind one interface, chosen by SMI_UPSCALERS."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def get_upscaler(name):
    if name == "local":
        from sellmyimages.upscaling.backends.local import LocalUpscaler

        return LocalUpscaler()
    raise ImproperlyConfigured(
        f"SMI_UPSCALERS names {name!r}, which is not a known upscaling engine; use 'local'."
    )


def preferred_upscaler():
    return get_upscaler(settings.SMI_UPSCALERS[0])
