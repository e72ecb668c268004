"""Source images: the catalog of originals, remote URLs, and validation.

Every image is opened and measured by the server before it is priced, so
a price never depends on dimensions a client sent.
"""

import logging
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from PIL import Image, UnidentifiedImageError

from sellmyimages import fetching

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF", "GIF", "AVIF", "MPO"}
CATALOG_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".avif"}
# EXIF orientations that turn the stored pixels by 90 degrees.
SIDEWAYS_ORIENTATIONS = {5, 6, 7, 8}
EXIF_ORIENTATION_TAG = 0x0112


class ImageRejected(ValueError):
    """The image cannot be sold; `code` names the problem for API clients."""

    def __init__(self, code, message):
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    path: Path


def inspect_image(path):
    """Decode the whole image at `path` and return its upright size.

    Raises ImageRejected for anything that is not a raster image we can
    upscale: SVG, other file types, truncated or corrupt files,
    decompression bombs and images under the minimum size.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > settings.SMI_MAX_SOURCE_BYTES:
        raise ImageRejected(
            "too_large",
            f"The image is {size} bytes; the limit is {settings.SMI_MAX_SOURCE_BYTES} bytes.",
        )
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip()
    if head.startswith((b"<?xml", b"<svg", b"<!DOCTYPE svg")) or b"<svg" in head:
        raise ImageRejected(
            "svg_not_supported",
            "SVG is a vector format and cannot be upscaled; use a JPEG, PNG, WebP or TIFF image.",
        )

    max_pixels = settings.SMI_MAX_SOURCE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit; an
            # error here stops any file over our own limit before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image_format = image.format
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRejected(
                        "decompression_bomb",
                        f"The image declares {width}x{height} pixels, more than the "
                        f"limit of {max_pixels} pixels.",
                    )
                if image_format not in ACCEPTED_FORMATS:
                    raise ImageRejected(
                        "unsupported_format",
                        f"{image_format} images are not supported; use JPEG, PNG, WebP or TIFF.",
                    )
                image.load()
                orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            "decompression_bomb",
            f"The image declares more pixels than the limit of {max_pixels}.",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(
            "not_an_image",
            "The file is not an image in a supported format (JPEG, PNG, WebP, TIFF, GIF, AVIF).",
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejected(
            "corrupt_image", f"The image is truncated or corrupt ({exc})."
        ) from exc

    if orientation in SIDEWAYS_ORIENTATIONS:
        width, height = height, width
    minimum = settings.SMI_MIN_SOURCE_SIDE
    if width < minimum or height < minimum:
        raise ImageRejected(
            "too_small",
            f"The image is {width}x{height} pixels; each side must be at least {minimum} pixels.",
        )
    return ImageInfo(width=width, height=height, format=image_format.lower(), path=path)


# The catalog: a folder of originals the site owner sells.


def catalog_dir():
    return Path(settings.SMI_CATALOG_DIR)


def list_catalog():
    """Return the names of the sellable images in the catalog folder."""
    folder = catalog_dir()
    if not folder.is_dir():
        return []
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_file() and entry.suffix.lower() in CATALOG_SUFFIXES
    )


MAX_CATALOG_NAME = 255


def catalog_path(name):
    """Return the path of catalog image `name`, rejecting anything outside."""
    not_found = ImageRejected(
        "catalog_image_not_found", f"No catalog image is named {str(name)[:80]!r}."
    )
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_CATALOG_NAME
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(".")
    ):
        raise not_found
    folder = catalog_dir().resolve()
    try:
        path = (folder / name).resolve()
        is_file = path.is_file()
    except (OSError, ValueError):
        raise not_found from None
    if path.parent != folder or not is_file:
        raise not_found
    return path


# Remote images, fetched once through the guarded fetcher.


def validate_image_url(url):
    """Reject a URL that is not http(s) on an allowed host, before any fetch."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ImageRejected("invalid_url", "The image URL must be a string of at most 2048 characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageRejected(
            "invalid_url",
            f"The image URL's scheme {parts.scheme!r} is not supported; use http or https.",
        )
    host = (parts.hostname or "").lower()
    allowed = {h.lower() for h in settings.SMI_ALLOWED_IMAGE_HOSTS}
    if host not in allowed:
        raise ImageRejected(
            "host_not_allowed",
            f"Images from {host!r} are not accepted; the allowed hosts are set in "
            "SMI_ALLOWED_IMAGE_HOSTS.",
        )


def fetch_policy(allowed_hosts=None):
    return fetching.FetchPolicy(
        max_bytes=settings.SMI_MAX_SOURCE_BYTES,
        allowed_hosts=frozenset(h.lower() for h in allowed_hosts) if allowed_hosts else None,
        allowed_addresses=frozenset(settings.SMI_FETCH_ALLOWED_ADDRESSES),
    )


def fetch_remote_image(url):
    """Download an image URL into the temporary folder and inspect it.

    Returns the ImageInfo of the downloaded file; the caller keeps the
    file with keep_source() or removes it with discard().
    """
    validate_image_url(url)
    tmp_dir = Path(settings.SMI_TMP_DIR)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    destination = tmp_dir / f"fetch-{uuid.uuid4().hex}"
    try:
        fetching.fetch_to_file(
            url, destination, policy=fetch_policy(settings.SMI_ALLOWED_IMAGE_HOSTS)
        )
        return inspect_image(destination)
    except fetching.FetchError as exc:
        discard(destination)
        raise ImageRejected("fetch_failed", f"The image could not be fetched: {exc}") from exc
    except BaseException:
        discard(destination)
        raise


def keep_source(info):
    """Move a fetched image into the sources folder and return its path."""
    sources = Path(settings.SMI_UPLOADS_DIR)
    sources.mkdir(parents=True, exist_ok=True)
    destination = sources / f"{uuid.uuid4().hex}.{info.format}"
    shutil.move(info.path, destination)
    return destination


def discard(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_source(*, catalog_image=None, image_url=None):
    """Resolve an image reference to (kind, ref, ImageInfo, is_temporary)."""
    if bool(catalog_image) == bool(image_url):
        raise ImageRejected(
            "invalid_image_reference", "Give exactly one of catalog_image or image_url."
        )
    if catalog_image:
        info = inspect_image(catalog_path(catalog_image))
        return "catalog", catalog_image, info, False
    info = fetch_remote_image(image_url)
    return "url", image_url, info, True
