"""The processing step: claim a paid job, upscale it, check and store the result."""

import logging
import os
import random
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.tasks import task
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import PaymentStatus, Status
from sellmyimages.maintenance import leases
from sellmyimages.upscaling import submission, watch
from sellmyimages.upscaling.backends import preferred_upscaler
from sellmyimages.upscaling.backends.base import UpscaleError

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
BACKOFF_BASE_SECONDS = 30


def output_path_for(job):
    return Path(settings.SMI_OUTPUT_DIR) / f"{job.job_id}.png"


def claim(job_id, attempt, owner):
    """Return the job if this task run owns its processing step, else None.

    A pending job is claimed with a compare-and-set; a job already in
    processing belongs to the run whose attempt number it records, so a
    duplicate task for an older attempt does nothing. Either way the run
    must also take the job's lease (sellmyimages.maintenance.leases), so a
    second task for the same attempt waits until the first run's lease
    lapses.
    """
    job = job_manager.get_job(job_id)
    if job.payment_status == PaymentStatus.REFUNDED:
        return None
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
            **leases.lease_fields(owner),
        )
        if not changed:
            return None
        return job_manager.get_job(job_id)
    if job.status == Status.PROCESSING and job.attempt_count == attempt:
        if job_manager.take_lease(
            job_id, attempt=attempt, owner=owner, seconds=leases.lease_seconds()
        ):
            return job_manager.get_job(job_id)
    return None


@task()
def process_job(job_id, attempt=1):
    """Upscale a paid job and complete it; retries transient errors."""
    owner = leases.new_owner()
    job = claim(job_id, attempt, owner)
    if job is None:
        return "not_claimed"
    outcome = submission.settle_earlier_submissions(job)
    if outcome is not None:
        return outcome
    upscaler = submission.choose_upscaler(job)
    if not upscaler.synchronous:
        # A remote provider finishes the job later, through a callback or
        # polling; its watch task then holds the job instead of a lease.
        return submission.submit(job, upscaler)
    if job.next_poll_at is not None:
        # This attempt runs here, so an earlier remote attempt's checks stop.
        job_manager.set_next_poll_at(job.job_id, None)
    destination = output_path_for(job)
    destination.parent.mkdir(parents=True, exist_ok=True)
    started = timezone.now()
    try:
        with leases.keep_lease(job.job_id, job.attempt_count, owner):
            output = upscaler.upscale(job, destination)
        check_output(job, output)
    except UpscaleError as exc:
        return handle_failure(job, exc, owner)

    with transaction.atomic():
        if not leases.holds_lease(job.job_id, job.attempt_count, owner):
            logger.warning("event=upscale_superseded job_id=%s", job.job_id)
            return "superseded"
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
            lease_owner="",
            lease_expires_at=None,
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


def handle_failure(job, exc, owner):
    with transaction.atomic():
        if not leases.holds_lease(job.job_id, job.attempt_count, owner):
            # Another run took the job over; the failure is no longer ours.
            logger.warning("event=upscale_superseded job_id=%s", job.job_id)
            return "superseded"
        remove_quietly(output_path_for(job))
        return record_failure(job, exc)


def record_failure(job, exc):
    if exc.transient and job.attempt_count < MAX_ATTEMPTS:
        next_attempt = job.attempt_count + 1
        delay = BACKOFF_BASE_SECONDS * 2 ** (job.attempt_count - 1)
        delay = delay * (0.5 + random.random())
        run_after = timezone.now() + timedelta(seconds=delay)
        # Nobody holds the job until the retry starts; if that task is lost,
        # the recovery sweep enqueues it again once this lease lapses.
        job_manager.update_job(
            job.job_id,
            attempt_count=next_attempt,
            lease_owner="",
            lease_expires_at=run_after + timedelta(seconds=leases.lease_seconds()),
            actor="worker",
            reason=f"retrying after {exc.code}",
        )
        job_id = str(job.job_id)
        transaction.on_commit(
            lambda: process_job.using(run_after=run_after).enqueue(job_id, attempt=next_attempt)
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


def poll_processing_jobs(*, limit):
    """Restart the checks of remote jobs whose watch task was lost; return how many.

    The poll sweep (sellmyimages.maintenance.sweeps) calls this on its
    interval. Each remote job is polled by its own chain of watch tasks
    (upscaling/watch.py); this only revives a chain that stopped. The local
    engine finishes within its task, so it has nothing to poll.
    """
    return watch.recover_overdue_jobs(limit=limit)
