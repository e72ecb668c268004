"""The interface every upscaling engine implements."""

from dataclasses import dataclass
from pathlib import Path


class UpscaleError(Exception):
    """An upscale failed; `transient` says whether trying again may succeed."""

    def __init__(self, code, message, *, transient):
        self.code = code
        self.transient = transient
        super().__init__(message)


@dataclass(frozen=True)
class UpscaleOutput:
    path: Path
    width: int
    height: int
    format: str
    size_bytes: int
    sha256: str
    credits_charged: object = None


class Upscaler:
    name = ""
    # True if upscale() returns the finished file in the same call; remote
    # engines return later, through a callback or polling.
    synchronous = True

    def upscale(self, job, destination):
        """Produce the job's output at destination and return an UpscaleOutput."""
        raise NotImplementedError
