"""The processing step: claim a paid job, upscale it, check and store the result."""

import logging
import os
import random
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.tasks import task
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, Status
from sellmyimages.upscaling.backends import preferred_upscaler
from sellmyimages.upscaling.backends.base import UpscaleError

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
BACKOFF_BASE_SECONDS = 30


def output_path_for(job):
    return Path(settings.SMI_OUTPUT_DIR) / f"{job.job_id}.png"


def claim(job_id, attempt):
    """Return the job if this task run owns its processing step, else None.

    A pending job is claimed with a compare-and-set; a job already in
    processing belongs to the run whose attempt number it records, so a
    duplicate task for an older attempt does nothing.
    """
    job = job_manager.get_job(job_id)
    if job.status == Status.PENDING:
        upscaler = preferred_upscaler()
        changed = job_manager.update_status(
            job_id,
            Status.PROCESSING,
            expected_status=Status.PENDING,
            actor="worker",
            reason=f"upscaling with {upscaler.name}",
            provider=upscaler.name,
            attempt_count=job.attempt_count + 1,
        )
        if not changed:
            return None
        return job_manager.get_job(job_id)
    if job.status == Status.PROCESSING and job.attempt_count == attempt:
        return job
    return None


@task()
def process_job(job_id, attempt=1):
    """Upscale a paid job and complete it; retries transient errors."""
    job = claim(job_id, attempt)
    if job is None:
        return "not_claimed"
    upscaler = preferred_upscaler()
    destination = output_path_for(job)
    destination.parent.mkdir(parents=True, exist_ok=True)
    started = timezone.now()
    try:
        output = upscaler.upscale(job, destination)
        check_output(job, output)
    except UpscaleError as exc:
        remove_quietly(destination)
        return handle_failure(job, exc)

    job_manager.update_status(
        job_id,
        Status.COMPLETED,
        expected_status=Status.PROCESSING,
        actor="worker",
        reason=f"upscaled by {upscaler.name}",
        output_path=str(output.path),
        output_size=output.size_bytes,
        output_width=output.width,
        output_height=output.height,
        output_sha256=output.sha256,
        output_format=output.format,
    )
    seconds = (timezone.now() - started).total_seconds()
    logger.info(
        "event=job_upscaled job_id=%s provider=%s seconds=%.2f output_bytes=%d",
        job.job_id,
        upscaler.name,
        seconds,
        output.size_bytes,
    )
    return "completed"


def check_output(job, output):
    """Accept a result only if its size is exactly factor x the source."""
    expected = (job.source_width * job.factor, job.source_height * job.factor)
    actual = (output.width, output.height)
    if any(abs(a - e) > 1 for a, e in zip(actual, expected)):
        raise UpscaleError(
            "wrong_output_size",
            f"The engine produced {actual[0]}x{actual[1]}, expected {expected[0]}x{expected[1]}.",
            transient=job.attempt_count < 2,
        )


def handle_failure(job, exc):
    if exc.transient and job.attempt_count < MAX_ATTEMPTS:
        next_attempt = job.attempt_count + 1
        delay = BACKOFF_BASE_SECONDS * 2 ** (job.attempt_count - 1)
        delay = delay * (0.5 + random.random())
        job_manager.update_job(
            job.job_id,
            attempt_count=next_attempt,
            actor="worker",
            reason=f"retrying after {exc.code}",
        )
        process_job.using(run_after=timezone.now() + timedelta(seconds=delay)).enqueue(
            str(job.job_id), attempt=next_attempt
        )
        logger.warning(
            "event=upscale_retry job_id=%s code=%s attempt=%d delay_seconds=%.0f",
            job.job_id,
            exc.code,
            next_attempt,
            delay,
        )
        return "retrying"
    job_manager.mark_failed(job.job_id, exc.code, detail=str(exc), actor="worker")
    logger.error("event=upscale_failed job_id=%s code=%s", job.job_id, exc.code)
    return "failed"


def remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
