"""The local engine: pyvips resampling on this machine, no provider needed."""

from pathlib import Path

from sellmyimages.jobs.pricing import max_output_megapixels
from sellmyimages.upscaling import engine
from sellmyimages.upscaling.backends.base import UpscaleError, UpscaleOutput, Upscaler


class LocalUpscaler(Upscaler):
    name = "local"
    synchronous = True

    def upscale(self, job, destination):
        source = Path(job.source_path)
        if not source.is_file():
            raise UpscaleError(
                "source_missing", f"The source image {source.name!r} is missing.", transient=False
            )
        try:
            result = engine.upscale_file(
                source,
                Path(destination),
                job.factor,
                max_output_pixels=max_output_megapixels(self.name) * 1_000_000,
            )
        except engine.EngineError as exc:
            raise UpscaleError("source_unreadable", str(exc), transient=False) from exc
        except MemoryError as exc:
            raise UpscaleError("engine_out_of_memory", str(exc), transient=True) from exc
        return UpscaleOutput(
            path=result.path,
            width=result.width,
            height=result.height,
            format=result.format,
            size_bytes=result.size_bytes,
            sha256=result.sha256,
            credits_charged=None,
        )
