"""Upscaling engines behind one interface, chosen by SMI_UPSCALERS."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


KNOWN_UPSCALERS = ("local", "upsampler", "replicate")


def get_upscaler(name):
    if name == "local":
        from sellmyimages.upscaling.backends.local import LocalUpscaler

        return LocalUpscaler()
    if name == "upsampler":
        from sellmyimages.upscaling.backends.upsampler import UpsamplerUpscaler

        return UpsamplerUpscaler()
    if name == "replicate":
        from sellmyimages.upscaling.backends.replicate import ReplicateUpscaler

        return ReplicateUpscaler()
    raise ImproperlyConfigured(
        f"SMI_UPSCALERS names {name!r}, which is not a known upscaling engine; "
        f"use {', '.join(map(repr, KNOWN_UPSCALERS))}."
    )


def preferred_upscaler():
    return get_upscaler(settings.SMI_UPSCALERS[0])


def check_configuration():
    """Raise ImproperlyConfigured naming the first setting an engine is missing."""
    names = settings.SMI_UPSCALERS
    if not names:
        raise ImproperlyConfigured(
            "SMI_UPSCALERS is empty; list at least one engine, such as 'local'."
        )
    if len(set(names)) != len(names):
        raise ImproperlyConfigured(f"SMI_UPSCALERS={','.join(names)!r} names an engine twice.")
    for name in names:
        upscaler = get_upscaler(name)
        check = getattr(upscaler, "check_configuration", None)
        if check is not None:
            check()
