"""Fetching a provider's result file, checking it, and storing it.

A result is kept only if it came through the guarded fetcher within the
size limit, libvips recognises it as PNG, JPEG or WebP, its dimensions are
factor x the source (within a pixel), and every pixel decodes.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyvips
from django.conf import settings

from sellmyimages import fetching

logger = logging.getLogger(__name__)

# libvips loader nickname -> the format name stored on the job.
RESULT_LOADERS = {"pngload": "png", "jpegload": "jpeg", "webpload": "webp"}
# Bytes per output pixel allowed for a result: 16-bit RGBA stored without
# compression is 8, so a larger file cannot be an honest result.
MAX_BYTES_PER_PIXEL = 8
HEADER_ALLOWANCE_BYTES = 1024 * 1024


class ResultError(Exception):
    """A result that could not be fetched or failed the checks.

    `kind` is RETRY_FETCH when fetching the same URL later may work,
    BAD_RESULT when the file itself is wrong (the job is resubmitted once),
    or BLOCKED when the URL points somewhere the fetcher refuses to go.
    """

    RETRY_FETCH = "retry_fetch"
    BAD_RESULT = "bad_result"
    BLOCKED = "blocked"

    def __init__(self, code, message, *, kind):
        self.code = code
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class StoredResult:
    path: Path
    width: int
    height: int
    format: str
    size_bytes: int
    sha256: str


def expected_size(job):
    return job.source_width * job.factor, job.source_height * job.factor


def fetch_policy(job, allowed_hosts):
    width, height = expected_size(job)
    max_bytes = min(
        settings.SMI_RESULT_MAX_BYTES,
        width * height * MAX_BYTES_PER_PIXEL + HEADER_ALLOWANCE_BYTES,
    )
    return fetching.FetchPolicy(
        max_bytes=max_bytes,
        timeout_seconds=float(settings.SMI_RESULT_FETCH_TIMEOUT_SECONDS),
        connect_timeout_seconds=min(
            10.0, float(settings.SMI_RESULT_FETCH_TIMEOUT_SECONDS)
        ),
        allowed_hosts=allowed_hosts,
        allowed_addresses=frozenset(settings.SMI_FETCH_ALLOWED_ADDRESSES),
    )


def fetch_result(job, url, *, name, allowed_hosts=None):
    """Download, check and store the result at `url`; return a StoredResult.

    The file is checked under a temporary name and renamed to
    SMI_OUTPUT_DIR/<name>.<format> only once it passed, so a stored output
    is always valid. Raise ResultError when the result is not acceptable.
    """
    if not url:
        raise ResultError(
            "result_missing",
            "The provider reported success but sent no result URL.",
            kind=ResultError.BAD_RESULT,
        )
    output_dir = Path(settings.SMI_OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    download = output_dir / f".{name}.download"
    try:
        fetched = download_result(url, download, fetch_policy(job, allowed_hosts))
        image_format, width, height = check_result(job, download)
        destination = output_dir / f"{name}.{image_format}"
        os.replace(download, destination)
    finally:
        download.unlink(missing_ok=True)
    logger.info(
        "event=result_stored job_id=%s host=%s size_bytes=%d format=%s",
        job.job_id,
        urlsplit(url).hostname,
        fetched.size_bytes,
        image_format,
    )
    return StoredResult(
        path=destination,
        width=width,
        height=height,
        format=image_format,
        size_bytes=fetched.size_bytes,
        sha256=fetched.sha256,
    )


def download_result(url, destination, policy):
    try:
        return fetching.fetch_to_file(url, destination, policy=policy)
    except (
        fetching.BlockedURL,
        fetching.BlockedAddress,
        fetching.TooManyRedirects,
    ) as exc:
        raise ResultError(
            "result_url_blocked", str(exc), kind=ResultError.BLOCKED
        ) from exc
    except fetching.TooLarge as exc:
        raise ResultError(
            "result_too_large", str(exc), kind=ResultError.BAD_RESULT
        ) from exc
    except fetching.FetchError as exc:
        if exc.transient:
            raise ResultError(
                "result_fetch_failed", str(exc), kind=ResultError.RETRY_FETCH
            ) from exc
        # A 4xx for the result, or an encoded body: the file is unusable.
        raise ResultError(
            "result_unavailable", str(exc), kind=ResultError.BAD_RESULT
        ) from exc


def find_loader(path):
    """Return the nickname of the libvips loader that sniffs `path`, or None."""
    pointer = pyvips.vips_lib.vips_foreign_find_load(str(path).encode())
    if pointer == pyvips.ffi.NULL:
        # Creating the Error reads and clears libvips' error buffer.
        pyvips.Error("no loader")
        return None
    type_name = pyvips.ffi.string(pointer).decode()
    return pyvips.nickname_find(pyvips.type_from_name(type_name))


def check_result(job, path):
    """Return (format, width, height) of a valid result; raise ResultError."""
    loader = find_loader(path)
    if loader not in RESULT_LOADERS:
        raise ResultError(
            "result_not_an_image",
            f"The result is not a PNG, JPEG or WebP image (libvips loader {loader!r}).",
            kind=ResultError.BAD_RESULT,
        )
    try:
        # Only the header is read here, so a result that declares huge
        # dimensions is rejected before any pixel is decoded.
        image = pyvips.Operation.call(
            loader, str(path), access="sequential", fail_on="error", revalidate=True
        )
    except pyvips.Error as exc:
        raise ResultError(
            "result_corrupt",
            f"The result cannot be read: {exc}",
            kind=ResultError.BAD_RESULT,
        ) from exc
    expected_width, expected_height = expected_size(job)
    if abs(image.width - expected_width) > 1 or abs(image.height - expected_height) > 1:
        raise ResultError(
            "result_wrong_size",
            f"The result is {image.width}x{image.height}, expected "
            f"{expected_width}x{expected_height}.",
            kind=ResultError.BAD_RESULT,
        )
    try:
        # avg() streams through every pixel, so a truncated or corrupt
        # body fails here without holding the image in memory.
        image.avg()
    except pyvips.Error as exc:
        raise ResultError(
            "result_corrupt",
            f"The result does not decode: {exc}",
            kind=ResultError.BAD_RESULT,
        ) from exc
    return RESULT_LOADERS[loader], image.width, image.height
