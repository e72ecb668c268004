"""`smi worker` for lifecycle_bench.py, with the no-op tasks registered and an instant upscaler.

The local engine is replaced by one that copies the prepared output named
by SMI_BENCH_OUTPUT, so the benchmark measures the shop's own work per
job and not the resampling.
"""

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sellmyimages.cli import main, setup_django  # noqa: E402


def instant_upscale(self, job, destination):
    from sellmyimages.upscaling.backends.base import UpscaleOutput

    prepared = json.loads(os.environ["SMI_BENCH_OUTPUT"])
    temporary = Path(destination).with_name(f".{Path(destination).name}.bench.tmp")
    shutil.copyfile(prepared["path"], temporary)
    os.replace(temporary, destination)
    return UpscaleOutput(
        path=Path(destination),
        width=prepared["width"],
        height=prepared["height"],
        format="png",
        size_bytes=prepared["size_bytes"],
        sha256=prepared["sha256"],
    )


if __name__ == "__main__":
    setup_django()
    import noop_tasks  # noqa: F401 (registers the no-op task with the worker)

    from sellmyimages.upscaling.backends import local

    local.LocalUpscaler.upscale = instant_upscale
    main()
