"""Short-lived signed URLs through which a provider downloads a job's source.

Providers need a public URL of the image. Rather than exposing a file path,
each submission gets a URL signed with django.core.signing's TimestampSigner
under its own salt. The view serves the source only while the signature is
younger than SMI_SOURCE_URL_MAX_AGE_SECONDS and the submission is open.
"""

import logging
import mimetypes
import os
import uuid
from pathlib import Path

import pyvips
from django.conf import settings
from django.core import signing
from django.http import FileResponse, Http404, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_safe

from sellmyimages.jobs.models import Status
from sellmyimages.upscaling.backends.base import UpscaleError
from sellmyimages.upscaling.models import OPEN_STATES, ProviderSubmission

logger = logging.getLogger(__name__)

SALT = "sellmyimages.upscaling.signed_source"
# Formats that providers are sent as they are; anything else is converted
# to PNG first, because the providers document no other input format.
PASS_THROUGH_FORMATS = {"jpeg", "png", "webp"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def signer():
    return signing.TimestampSigner(salt=SALT)


def source_token(submission):
    return signer().sign(f"{submission.job.job_id.hex}.{submission.pk}")


def source_url(submission, path):
    """Return the absolute signed URL of the source file at `path`."""
    filename = f"source{Path(path).suffix.lower()}"
    relative = reverse("upscaling:source", args=[source_token(submission), filename])
    return settings.PUBLIC_BASE_URL + relative


def converted_path(job):
    return Path(settings.SMI_TMP_DIR) / "provider-sources" / f"{job.job_id}.png"


def needs_conversion(job, image):
    if job.source_format.lower() not in PASS_THROUGH_FORMATS:
        return True
    if image.get_typeof("orientation") != 0 and image.get("orientation") != 1:
        # Providers may ignore EXIF orientation and return a sideways image.
        return True
    return image.interpretation == "cmyk"


def prepare_provider_source(job):
    """Return the file a provider should download for `job`.

    The original is used when it is an upright sRGB JPEG, PNG or WebP;
    otherwise an upright sRGB PNG copy is written once and reused.
    """
    source = Path(job.source_path)
    if not source.is_file():
        raise UpscaleError(
            "source_missing",
            f"The source image {source.name!r} is missing.",
            transient=False,
        )
    converted = converted_path(job)
    if converted.is_file():
        return converted
    try:
        image = pyvips.Image.new_from_file(str(source), fail_on="error")
        if not needs_conversion(job, image):
            return source
        image = image.autorot()
        if image.interpretation == "cmyk":
            image = image.icc_transform("srgb", embedded=True, input_profile="cmyk")
        converted.parent.mkdir(parents=True, exist_ok=True)
        partial = converted.with_name(f".{converted.name}.{os.getpid()}.part")
        image.pngsave(str(partial))
        os.replace(partial, converted)
    except pyvips.Error as exc:
        raise UpscaleError(
            "source_unreadable",
            f"The source image {source.name!r} cannot be read: {exc}",
            transient=False,
        ) from exc
    logger.info("event=provider_source_converted job_id=%s", job.job_id)
    return converted


def remove_provider_source(job):
    """Delete the converted copy of the job's source, if one was made."""
    converted_path(job).unlink(missing_ok=True)


@require_safe
def serve_source(request, token, filename):
    """Stream a job's source image to the provider holding a valid signed URL."""
    try:
        value = signer().unsign(token, max_age=settings.SMI_SOURCE_URL_MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        return HttpResponse(
            "This source URL has expired.\n", status=410, content_type="text/plain"
        )
    except signing.BadSignature:
        raise Http404("Unknown source URL.") from None

    job_hex, _, submission_pk = value.partition(".")
    try:
        job_id = uuid.UUID(hex=job_hex)
    except ValueError:
        raise Http404("Unknown source URL.") from None
    submission = (
        ProviderSubmission.objects.select_related("job")
        .filter(pk=submission_pk, job__job_id=job_id)
        .first()
    )
    if submission is None or submission.job.status != Status.PROCESSING:
        raise Http404("Unknown source URL.")
    if submission.state not in OPEN_STATES:
        raise Http404("Unknown source URL.")

    job = submission.job
    converted = converted_path(job)
    path = converted if converted.is_file() else Path(job.source_path)
    if not path.is_file():
        raise Http404("Unknown source URL.")
    content_type = (
        "image/png"
        if path == converted
        else CONTENT_TYPES.get(job.source_format.lower())
        or mimetypes.guess_type(path.name)[0]
        or "application/octet-stream"
    )

    response = FileResponse(open(path, "rb"), content_type=content_type)
    response["Cache-Control"] = "private, no-store"
    response["X-Robots-Tag"] = "noindex"
    logger.info(
        "event=provider_source_served job_id=%s provider=%s attempt=%d",
        job.job_id,
        submission.provider,
        submission.attempt,
    )
    return response
