"""Placing an order: the one path from an image reference to a checkout.

The JSON API, the storefront and the CLI all call place_order, so the
same validation and pricing apply everywhere and bad input leaves no job,
file or payment behind.
"""

import logging
from dataclasses import dataclass

from django.db import transaction

from sellmyimages.catalog import images
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.pricing import available_quotes, max_output_megapixels
from sellmyimages.jobs.exceptions import JobValidationError
from sellmyimages.payments.backends import get_payment_backend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Order:
    job: object
    checkout_url: str


def quote_image(*, catalog_image=None, image_url=None):
    """Measure an image and return (ImageInfo, quotes for each resolution)."""
    _kind, _ref, info, is_temporary = images.open_source(
        catalog_image=catalog_image, image_url=image_url
    )
    if is_temporary:
        images.discard(info.path)
    return info, available_quotes(info.width, info.height)


def place_order(
    *,
    resolution,
    catalog_image=None,
    image_url=None,
    email="",
    post_id="",
    attachment_id="",
    actor="customer",
):
    """Create a job for the image and start its checkout; return an Order."""
    job_manager.validate_resolution(resolution)
    job_manager.validate_email(email)
    kind, ref, info, is_temporary = images.open_source(
        catalog_image=catalog_image, image_url=image_url
    )
    try:
        offered = {quote.resolution for quote in available_quotes(info.width, info.height)}
        if resolution not in offered:
            raise JobValidationError(
                "resolution",
                f"{resolution!r} would produce an image larger than "
                f"{max_output_megapixels()} megapixels and is not offered for this image.",
            )
        source_path = images.keep_source(info) if is_temporary else info.path
    except BaseException:
        if is_temporary:
            images.discard(info.path)
        raise

    backend = get_payment_backend()
    try:
        with transaction.atomic():
            job = job_manager.create_job(
                resolution=resolution,
                source_kind=kind,
                source_ref=ref,
                source_path=source_path,
                source_width=info.width,
                source_height=info.height,
                source_format=info.format,
                email=email,
                post_id=post_id,
                attachment_id=attachment_id,
                payment_provider=backend.name,
                actor=actor,
            )
            session = backend.start_checkout(job)
            job_manager.update_checkout_session(job.job_id, session.session_id, actor=actor)
    except BaseException:
        if is_temporary:
            images.discard(source_path)
        raise
    return Order(job=job_manager.get_job(job.job_id), checkout_url=session.url)
