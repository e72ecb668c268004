"""Small previews of catalog images, made once with pyvips and cached."""

import hashlib
import os
from pathlib import Path

import pyvips
from django.conf import settings

THUMBNAIL_WIDTH = 480


def thumbnail_for(source):
    """Return the path of a JPEG preview of `source`, creating it if needed."""
    source = Path(source)
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    folder = Path(settings.DATA_DIR) / "thumbnails"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.jpg"
    if path.exists():
        return path
    # thumbnail() applies EXIF orientation and shrinks on load, so even a
    # large original costs little memory.
    image = pyvips.Image.thumbnail(str(source), THUMBNAIL_WIDTH, height=THUMBNAIL_WIDTH * 2)
    if image.interpretation not in ("srgb", "b-w"):
        image = image.colourspace("srgb")
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    temporary = folder / f".{key}.{os.getpid()}.tmp.jpg"
    image.jpegsave(str(temporary), Q=82, strip=True)
    os.replace(temporary, path)
    return path
