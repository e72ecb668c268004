"""Compare the libvips upscaling engine with a plain Pillow resize and PNG save.

Usage: python bench/engine_bench.py [--quick] [--repeat N]

Each measurement runs in a fresh child process, so the peak RSS (ru_maxrss of
that child) belongs to one run. Seconds cover decoding, resampling and writing
the PNG inside the child, not the interpreter start. Both engines apply the
EXIF orientation and write PNG at zlib level 3. The engine also hashes and
fsyncs its output, which the Pillow baseline does not. With --repeat N the
table shows the fastest of N runs and the largest peak RSS, because other load
on the machine only ever adds time.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES = Path("/work/shared/testdata/images")
QUICK_IMAGES = ["photo_cat_chelsea_451x300.png", "photo_retina_fundus_1411x1411.jpg"]
FULL_IMAGES = QUICK_IMAGES + ["phone_photo_dog_4032x3024_exif_orientation6.jpg"]
FACTORS = [4, 8]

# Same zlib level as engine.PNG_COMPRESSION, so the file write costs compare.
PILLOW_COMPRESS_LEVEL = 3
# Pillow stores RGB as 4 bytes per pixel. It resizes horizontally first, so it
# keeps the source, an (output width x source height) image and the output in
# memory at once.
PILLOW_BYTES_PER_PIXEL = 4
PILLOW_MEMORY_LIMIT = 8 * 1024**3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="measure only the two small images"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="number of runs per measurement (default: 1)",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        engine, source, factor, destination = arguments.child
        run_child(engine, Path(source), int(factor), Path(destination))
        return
    images = QUICK_IMAGES if arguments.quick else FULL_IMAGES
    if arguments.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {arguments.repeat}")
    run_benchmark(images, arguments.repeat)


def run_child(engine, source, factor, destination):
    """Upscale once with the given engine and print the measurement as JSON."""
    if engine == "ours":
        from sellmyimages.upscaling.engine import upscale_file

        started = time.perf_counter()
        result = upscale_file(source, destination, factor)
        seconds = time.perf_counter() - started
        width, height = result.width, result.height
    else:
        from PIL import Image, ImageOps

        Image.MAX_IMAGE_PIXELS = None
        started = time.perf_counter()
        with Image.open(source) as image:
            upright = ImageOps.exif_transpose(image)
            size = (upright.width * factor, upright.height * factor)
            upscaled = upright.resize(size, Image.LANCZOS)
            upscaled.save(destination, compress_level=PILLOW_COMPRESS_LEVEL)
        seconds = time.perf_counter() - started
        width, height = upscaled.size
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "width": width,
                "height": height,
                "peak_rss_kib": peak_rss_kib,
            }
        )
    )


def measure_repeated(engine, source, factor, directory, repeat):
    """Return the fastest time and the largest peak RSS of repeat runs."""
    runs = [measure(engine, source, factor, directory) for _ in range(repeat)]
    fastest = min(runs, key=lambda run: run["seconds"])
    largest_rss_kib = max(run["peak_rss_kib"] for run in runs)
    return {**fastest, "peak_rss_kib": largest_rss_kib}


def measure(engine, source, factor, directory):
    """Run one upscale in a child process and return its measurement."""
    destination = directory / f"{engine}-{source.stem}-{factor}x.png"
    command = [
        sys.executable,
        __file__,
        "--child",
        engine,
        str(source),
        str(factor),
        str(destination),
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    destination.unlink(missing_ok=True)
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{engine} failed on {source.name!r}: {last_line}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def estimate_pillow_bytes(source, factor):
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        width, height = ImageOps.exif_transpose(image).size
    output_width = width * factor
    pixels = width * height + output_width * height + output_width * height * factor
    return pixels * PILLOW_BYTES_PER_PIXEL


def run_benchmark(images, repeat):
    print_environment()
    print(f"Runs per measurement: {repeat}")
    print()
    header = (
        f"{'image':<48} {'factor':>6} {'engine':<7} {'out MP':>8} "
        f"{'seconds':>8} {'MP/s':>7} {'peak RSS MiB':>12}"
    )
    print(header)
    print("-" * len(header))

    ratios = []
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as directory:
        for name in images:
            for factor in FACTORS:
                pair = compare_engines(IMAGES / name, factor, Path(directory), repeat)
                if pair is not None:
                    ratios.append((name, factor, *pair))

    print()
    print(f"Load average at the end: {format_load_average()}")
    print_ratios(ratios)


def compare_engines(source, factor, directory, repeat):
    """Measure both engines on one case and return (ours, pillow).

    Return None when the Pillow run is skipped for lack of memory.
    """
    ours = measure_repeated("ours", source, factor, directory, repeat)
    print_row(source.name, factor, "ours", ours)
    pillow_bytes = estimate_pillow_bytes(source, factor)
    if pillow_bytes > PILLOW_MEMORY_LIMIT:
        print(
            f"{source.name:<48} {factor:>6} pillow  skipped: needs about "
            f"{pillow_bytes / 1024**3:.1f} GiB, over the "
            f"{PILLOW_MEMORY_LIMIT / 1024**3:.0f} GiB limit"
        )
        return None
    pillow = measure_repeated("pillow", source, factor, directory, repeat)
    print_row(source.name, factor, "pillow", pillow)
    return ours, pillow


def print_ratios(ratios):
    print(
        "Ratios ours/Pillow (speed above 1 means ours is faster, "
        "memory below 1 means ours uses less):"
    )
    for name, factor, ours, pillow in ratios:
        speed = pillow["seconds"] / ours["seconds"]
        memory = ours["peak_rss_kib"] / pillow["peak_rss_kib"]
        print(f"  {name} {factor}x: speed {speed:.2f}, peak RSS {memory:.2f}")


def print_row(name, factor, engine, measurement):
    megapixels = measurement["width"] * measurement["height"] / 1e6
    seconds = measurement["seconds"]
    rss_mib = measurement["peak_rss_kib"] / 1024
    print(
        f"{name:<48} {factor:>6} {engine:<7} {megapixels:>8.1f} "
        f"{seconds:>8.2f} {megapixels / seconds:>7.1f} {rss_mib:>12.0f}",
        flush=True,
    )


def print_environment():
    import PIL
    import pyvips

    libvips = ".".join(str(pyvips.version(part)) for part in range(3))
    print(
        f"Python {platform.python_version()}, libvips {libvips}, "
        f"Pillow {PIL.__version__}, {os.cpu_count()} CPUs, {platform.machine()}"
    )
    # Other processes on the machine slow both engines, and the ratios less so.
    print(f"Load average at the start: {format_load_average()}")


def format_load_average():
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


if __name__ == "__main__":
    main()
