"""Upscale image files by an integer factor with libvips, streaming to PNG.

The pipeline reads the source, applies its EXIF orientation, converts CMYK and
Lab-style colour spaces to sRGB, resamples with a Lanczos-3 kernel and writes a
lossless PNG through a temporary file. libvips evaluates it in strips, so the
output never has to fit in memory. This module does not import Django.
"""

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import pyvips

logger = logging.getLogger(__name__)

# libvips loaders that may read uploads. A source is sniffed with
# vips_foreign_find_load() and only then opened with the loader it names, so
# svgload, pdfload, vipsload, matrixload, csvload and the rest never parse it.
# NOTE: the pyvips-binary build of libvips 8.18 reads HEIC headers but has no
# HEVC decoder, so HEIC sources pass measure_display_size() and then fail.
ALLOWED_LOADERS = frozenset(
    {"jpegload", "pngload", "webpload", "tiffload", "gifload", "heifload"}
)
ALLOWED_FORMATS_TEXT = "JPEG, PNG, WebP, TIFF, GIF, HEIF or AVIF"

# The pipeline has one convolution per output phase and axis, so it grows with
# the factor. At 16x a 12 MP photo already becomes a 3-gigapixel PNG.
MAX_FACTOR = 16

LANCZOS_LOBES = 3

# Upscaled images change slowly from row to row, so the cheap "up" filter
# compresses them about as well as adaptive filtering. Measured on the 8x
# phone photo (780 MP output) with libvips 8.18.7 on a 2-CPU x86_64 VM, zlib
# level 3 took 26 s for 356 MiB and level 6 took 70 s for 321 MiB. Level 0
# took 18 s for 2.2 GiB. Level 3 stays close to the resampling time and writes
# only 10% more bytes than level 6.
PNG_COMPRESSION = 3
PNG_FILTER = "up"

# EXIF orientations 5 to 8 include a quarter turn, so width and height swap.
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# Colour spaces that PNG cannot store, so the engine converts them to sRGB.
CONVERTED_INTERPRETATIONS = frozenset(
    {"lab", "labq", "labs", "lch", "cmc", "xyz", "yxy", "scrgb", "hsv"}
)
OUTPUT_FORMATS = frozenset({"uchar", "ushort"})


class EngineError(Exception):
    """A source image that cannot be read, decoded or upscaled."""


class OutputTooLargeError(EngineError):
    """An upscale whose output would exceed max_output_pixels."""


@dataclasses.dataclass(frozen=True)
class UpscaleResult:
    """The PNG file written by upscale_file()."""

    path: Path
    width: int
    height: int
    format: str
    size_bytes: int
    sha256: str


def measure_display_size(path: Path) -> tuple[int, int]:
    """Return (width, height) after EXIF orientation, reading only the header.

    Raise EngineError if the file is not an allowed image format. A file that
    passes may still fail to decode, for example a truncated JPEG.
    """
    path = Path(path)
    image = _open_image(path, access="sequential")
    return _display_size(image)


def upscale_file(
    source: Path,
    destination: Path,
    factor: int,
    *,
    max_output_pixels: int | None = None,
) -> UpscaleResult:
    """Write source upscaled by factor to destination as an upright PNG.

    The output is factor times the source's display size. It keeps alpha,
    16-bit depth, grayscale and the embedded ICC profile, while CMYK becomes
    sRGB. Raise OutputTooLargeError before decoding any pixels when the output
    would exceed max_output_pixels, and EngineError (chained to the libvips
    error) when the source cannot be read or decoded. Either the whole PNG
    replaces destination or destination is left as it was.
    """
    source = Path(source)
    destination = Path(destination)
    _validate_arguments(destination, factor, max_output_pixels)

    header = _open_image(source, access="sequential")
    display_width, display_height = _display_size(header)
    output_width = display_width * factor
    output_height = display_height * factor
    if max_output_pixels is not None:
        output_pixels = output_width * output_height
        if output_pixels > max_output_pixels:
            raise OutputTooLargeError(
                f"Upscaling {source.name!r} by {factor} would give "
                f"{output_width}x{output_height} = {output_pixels} pixels, "
                f"more than max_output_pixels={max_output_pixels}."
            )

    started = time.monotonic()
    _clear_libvips_errors()
    try:
        image = _load_upright(source, header)
        image = _convert_for_png(image, source)
        upscaled = _upscale_preserving_alpha(image, factor)
    except pyvips.Error as error:
        raise _engine_error(source, error) from error
    result = _write_png_atomically(upscaled, destination, source)
    logger.info(
        "upscaled source=%s factor=%d width=%d height=%d bytes=%d seconds=%.2f",
        source.name,
        factor,
        result.width,
        result.height,
        result.size_bytes,
        time.monotonic() - started,
    )
    return result


def _validate_arguments(destination, factor, max_output_pixels):
    if isinstance(factor, bool) or not isinstance(factor, int):
        raise TypeError(f"factor={factor!r} must be an int.")
    if not 1 <= factor <= MAX_FACTOR:
        raise ValueError(f"factor={factor!r} must be between 1 and {MAX_FACTOR}.")
    if max_output_pixels is not None and max_output_pixels < 1:
        raise ValueError(
            f"max_output_pixels={max_output_pixels!r} must be positive or None."
        )
    if destination.suffix.lower() != ".png":
        raise ValueError(
            f"destination={str(destination)!r} must end in .png because the "
            f"output is always PNG."
        )


def _find_loader(path):
    """Return the nickname of the libvips loader that sniffing picks for path."""
    if not path.is_file():
        raise EngineError(f"Source image {path.name!r} was not found.")
    pointer = pyvips.vips_lib.vips_foreign_find_load(str(path).encode())
    if pointer == pyvips.ffi.NULL:
        # pyvips.Error picks up and clears the libvips error buffer.
        error = pyvips.Error(f"no libvips loader for {path}")
        raise EngineError(
            f"{path.name!r} is not an image format that libvips recognises, "
            f"expected {ALLOWED_FORMATS_TEXT}."
        ) from error
    type_name = pyvips.ffi.string(pointer).decode()
    return pyvips.nickname_find(pyvips.type_from_name(type_name))


def _open_image(path, access):
    """Open path with an allowed loader, which reads only the header."""
    loader = _find_loader(path)
    if loader not in ALLOWED_LOADERS:
        raise EngineError(
            f"{path.name!r} has an unsupported format (libvips loader "
            f"{loader!r}), expected {ALLOWED_FORMATS_TEXT}."
        )
    _clear_libvips_errors()
    try:
        return pyvips.Operation.call(
            loader,
            str(path),
            access=access,
            # "error" makes truncated and corrupt data raise instead of
            # decoding to grey, but keeps the warnings that many camera
            # JPEGs trigger (such as extraneous bytes before a marker).
            fail_on="error",
            # Skip libvips' operation cache, which could otherwise return
            # the image of an earlier file at the same path.
            revalidate=True,
        )
    except pyvips.Error as error:
        raise _engine_error(path, error) from error


def _display_size(image):
    if _orientation(image) in TRANSPOSING_ORIENTATIONS:
        return image.height, image.width
    return image.width, image.height


def _orientation(image):
    if image.get_typeof("orientation") == 0:
        return 1
    return image.get("orientation")


def _load_upright(path, header):
    """Return the source pixels rotated upright by their EXIF orientation."""
    if _orientation(header) == 1:
        return header
    # A quarter turn reads the source in columns, which sequential access
    # cannot serve. The source is factor**2 times smaller than the output,
    # so it is opened for random access, which decodes it whole.
    image = _open_image(path, access="random")
    return image.autorot()


def _convert_for_png(image, path):
    """Return image in a colour space and sample format that PNG can store."""
    if image.interpretation == "cmyk":
        # The embedded profile is used when there is one, else libvips'
        # built-in CMYK profile. The output carries the sRGB profile.
        image = image.icc_transform("srgb", embedded=True, input_profile="cmyk")
    elif (
        image.interpretation in CONVERTED_INTERPRETATIONS
        or image.format not in OUTPUT_FORMATS
    ):
        image = image.colourspace("srgb").copy()
        # The source profile describes the old colour space, not these pixels.
        if image.get_typeof("icc-profile-data") != 0:
            image.remove("icc-profile-data")
    if image.format not in OUTPUT_FORMATS:
        raise EngineError(
            f"{path.name!r} has {image.format!r} samples, expected 8-bit or "
            f"16-bit samples."
        )
    return image


def _upscale_preserving_alpha(image, factor):
    """Return image upscaled by factor in its own sample format."""
    sample_format = image.format
    max_value = 65535 if sample_format == "ushort" else 255
    if not image.hasalpha():
        upscaled = _lanczos_upscale(image.cast("float"), factor)
        return upscaled.rint().cast(sample_format)

    # Resampling premultiplied values keeps the colour of fully transparent
    # pixels from bleeding into the visible edge as a dark or light halo.
    premultiplied = image.premultiply(max_alpha=max_value)
    upscaled = _lanczos_upscale(premultiplied, factor)
    colour = upscaled.extract_band(0, n=upscaled.bands - 1)
    # Lanczos lobes can push alpha below zero, and unpremultiply() would then
    # flip the sign of the colour.
    alpha = upscaled.extract_band(upscaled.bands - 1).clamp(min=0, max=max_value)
    restored = colour.bandjoin(alpha).unpremultiply(max_alpha=max_value)
    return restored.rint().cast(sample_format)


def _lanczos_upscale(image, factor):
    """Resample a float image by factor in both axes with a Lanczos-3 kernel.

    libvips 8.18's resize() upsizes with its bicubic interpolator whatever
    kernel is requested, so this builds the Lanczos filter from convolutions.
    Output pixel factor * x + phase lies at a fixed offset from source pixel x,
    so each phase is one 7-tap convolution of the source. The vertical pass
    interleaves the phase images row by row with case(), then the horizontal
    pass joins them as bands and unfolds the bands into columns.
    """
    if factor == 1:
        return image
    return _upscale_columns(_upscale_rows(image, factor), factor)


def _upscale_rows(image, factor):
    phase_images = []
    for phase in range(factor):
        weights = _lanczos_phase_weights(factor, phase)
        mask = pyvips.Image.new_from_list([[weight] for weight in weights])
        phase_image = image.conv(mask, precision="float")
        phase_images.append(phase_image.zoom(1, factor))
    # Row y of the output comes from phase image y % factor.
    phase_index = pyvips.Image.xyz(1, factor)[1].cast("uchar")
    phase_index = phase_index.replicate(image.width, image.height)
    return phase_index.case(phase_images)


def _upscale_columns(image, factor):
    phase_images = []
    for phase in range(factor):
        weights = _lanczos_phase_weights(factor, phase)
        mask = pyvips.Image.new_from_list([weights])
        phase_images.append(image.conv(mask, precision="float"))
    # Pixel x of the joined image contains output pixels factor * x to
    # factor * x + factor - 1 as consecutive band groups.
    joined = phase_images[0].bandjoin(phase_images[1:])
    return joined.bandunfold(factor=factor)


def _lanczos_phase_weights(factor, phase):
    """Return the 7 normalised Lanczos-3 weights for one output phase.

    Pixel centres are aligned as in Pillow: output pixel factor * x + phase
    maps to source coordinate x + offset with offset in (-0.5, 0.5), and the
    weights apply to source pixels x - 3 to x + 3.
    """
    offset = (phase + 0.5) / factor - 0.5
    weights = [
        _lanczos(tap - offset) for tap in range(-LANCZOS_LOBES, LANCZOS_LOBES + 1)
    ]
    total = sum(weights)
    return [weight / total for weight in weights]


def _lanczos(x):
    if x == 0:
        return 1.0
    if abs(x) >= LANCZOS_LOBES:
        return 0.0
    angle = math.pi * x
    return (
        LANCZOS_LOBES
        * math.sin(angle)
        * math.sin(angle / LANCZOS_LOBES)
        / (angle * angle)
    )


def _write_png_atomically(image, destination, source):
    """Save image as PNG next to destination, fsync it, then rename it over."""
    # NOTE: mkstemp() creates the file with mode 0600, and the renamed output
    # keeps that mode.
    descriptor, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"
    )
    os.close(descriptor)
    temporary_path = Path(temporary_name)
    try:
        try:
            # keep="icc" drops EXIF and XMP, so no orientation tag can turn
            # the upright pixels again.
            image.pngsave(
                temporary_name,
                compression=PNG_COMPRESSION,
                filter=PNG_FILTER,
                keep="icc",
            )
        except pyvips.Error as error:
            raise _engine_error(source, error) from error
        sha256, size_bytes = _hash_and_fsync(temporary_path)
        os.replace(temporary_path, destination)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    _fsync_directory(destination.parent)
    return UpscaleResult(
        path=destination,
        width=image.width,
        height=image.height,
        format="png",
        size_bytes=size_bytes,
        sha256=sha256,
    )


def _hash_and_fsync(path):
    digest = hashlib.sha256()
    size_bytes = 0
    with open(path, "rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
            size_bytes += len(chunk)
        os.fsync(file.fileno())
    return digest.hexdigest(), size_bytes


def _fsync_directory(directory):
    """Flush the rename to disk, so a crash cannot bring back the old file."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _clear_libvips_errors():
    """Drop messages left in libvips' global error buffer by earlier calls.

    Loaders also log warnings there without failing, and pyvips.Error copies
    the whole buffer, so a stale line could otherwise become the reason that
    _engine_error() reports.
    """
    pyvips.vips_lib.vips_error_clear()


def _engine_error(path, error):
    """Return an EngineError naming path and libvips' first error line."""
    detail_lines = [line for line in error.detail.splitlines() if line.strip()]
    reason = detail_lines[0] if detail_lines else error.message
    return EngineError(
        f"Failed to process {path.name!r} because libvips reported {reason!r}."
    )
