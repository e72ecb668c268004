"""Jobs at remote providers: the shared rules for timing, retries and failure.

One job's path through a remote provider:

1. process_job claims the job and calls submission.submit(). A
   ProviderSubmission row is written before the HTTP request, so a worker
   that dies mid-request leaves a record that watch.py later treats as
   "may have started".
2. The provider calls /webhooks/<provider>/<secret>, and
   collect.confirm_callback requests the real status from the provider's
   API. watch.watch_remote_job polls at growing intervals in case no
   callback comes, and fails the job once
   SMI_PROVIDER_MAX_PROCESSING_MINUTES have passed.
3. collect.collect() fetches the result through the guarded fetcher, checks
   and stores it, then completes the job; the pipeline then issues the
   download token and queues the email.

Transient errors schedule a new attempt with process_job.using(run_after=...),
never a sleep in a task.
"""

import logging
import random
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from sellmyimages.jobs.exceptions import ConcurrentUpdate, InvalidTransition
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, Status
from sellmyimages.upscaling import circuit, signed_source
from sellmyimages.upscaling.models import (
    OPEN_STATES,
    ProviderSubmission,
    SubmissionState,
)

logger = logging.getLogger(__name__)

ACTOR = "worker"
LIVE_STATES = (SubmissionState.ACCEPTED, SubmissionState.COLLECTING)
DOUBTFUL_STATES = (SubmissionState.SENDING, SubmissionState.IN_DOUBT)


# Timing, all from settings so that tests and operators can change it.


def seconds_setting(name):
    return float(getattr(settings, name))


def processing_deadline(job):
    started = job.processing_started_at or timezone.now()
    minutes = float(settings.SMI_PROVIDER_MAX_PROCESSING_MINUTES)
    return started + timedelta(minutes=minutes)


def in_doubt_after():
    """Return how old a submission still marked sending must be to be in doubt.

    It exceeds the time the sending worker's HTTP request can take, so a
    submission still sending after it belongs to a worker that stopped.
    """
    return timedelta(seconds=2 * seconds_setting("SMI_PROVIDER_TIMEOUT_SECONDS") + 5)


def collect_lease():
    return timedelta(seconds=seconds_setting("SMI_RESULT_FETCH_TIMEOUT_SECONDS") + 60)


def backoff_seconds(attempt, retry_after=None):
    """Return the delay before attempt `attempt` + 1: exponential, jittered.

    A Retry-After from the provider is a minimum.
    """
    delay = seconds_setting("SMI_PROVIDER_RETRY_BASE_SECONDS") * 2 ** max(
        attempt - 1, 0
    )
    delay = min(delay, seconds_setting("SMI_PROVIDER_RETRY_MAX_SECONDS"))
    delay *= random.uniform(0.5, 1.5)
    if retry_after is not None:
        delay = max(delay, float(retry_after))
    return delay


def poll_interval(tick):
    initial = seconds_setting("SMI_PROVIDER_POLL_INITIAL_SECONDS")
    return min(initial * 2**tick, seconds_setting("SMI_PROVIDER_POLL_MAX_SECONDS"))


def attempts_this_run(job):
    """Return how many submissions were made since the job entered processing.

    An admin retry starts a new run, which gets the full attempt budget.
    """
    return ProviderSubmission.objects.filter(
        job=job, created_at__gte=job.processing_started_at
    ).count()


# Submissions that may still be live.


def pinned_provider(job):
    """Return the provider holding a submission of the job that may be live."""
    submission = (
        ProviderSubmission.objects.filter(job=job, state__in=OPEN_STATES)
        .order_by("-attempt")
        .first()
    )
    return submission.provider if submission else None


def adopt(submission, status):
    """Mark an in-doubt submission as accepted under the provider's job id."""
    try:
        with transaction.atomic():
            adopted = ProviderSubmission.objects.filter(
                pk=submission.pk, state__in=DOUBTFUL_STATES
            ).update(
                state=SubmissionState.ACCEPTED,
                provider_job_id=status.provider_job_id,
                accepted_at=timezone.now(),
                provider_status=status.raw_status[:32],
            )
    except IntegrityError:
        return False
    if adopted:
        job_manager.record_event(
            submission.job.job_id,
            "provider_submission_adopted",
            actor=ACTOR,
            data={
                "provider": submission.provider,
                "attempt": submission.attempt,
                "provider_job_id": status.provider_job_id,
            },
        )
    return bool(adopted)


# Retries and failure.


def schedule_retry(job, exc):
    """Schedule the job's next attempt after a transient error, or fail it."""
    job.refresh_from_db()
    if job.status != Status.PROCESSING:
        return "finished"
    used = attempts_this_run(job)
    if used >= settings.SMI_PROVIDER_MAX_ATTEMPTS:
        return fail_job(job, exc.code, f"Gave up after {used} attempts. {exc}")
    delay = backoff_seconds(used, exc.retry_after)
    if (
        exc.retry_after is None
        and pinned_provider(job) is None
        and circuit.is_open(job.provider)
        and circuit.has_alternative(job, exclude=job.provider)
    ):
        # The next attempt goes to another engine, which need not wait.
        delay = 0.0
    run_after = timezone.now() + timedelta(seconds=delay)
    if run_after >= processing_deadline(job):
        return fail_job(
            job,
            exc.code,
            f"{exc} The next attempt would start after the processing deadline.",
        )
    # Imported here because the tasks module imports this one.
    from sellmyimages.upscaling.tasks import process_job

    attempt = job.attempt_count
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status != Status.PROCESSING or locked.attempt_count != attempt:
            return "superseded"
        # The recovery sweep leaves the job alone until the retry is due.
        hold = timedelta(seconds=getattr(settings, "SMI_PROCESSING_LEASE_SECONDS", 300))
        job_manager.update_job(
            job.job_id,
            actor=ACTOR,
            reason=f"retrying after {exc.code}",
            attempt_count=attempt + 1,
            lease_owner="",
            lease_expires_at=run_after + hold,
        )
        job_manager.record_event(
            job.job_id,
            "upscale_retry_scheduled",
            actor=ACTOR,
            reason=exc.code,
            data={
                "attempt": attempt + 1,
                "delay_seconds": round(delay, 1),
                "retry_after": exc.retry_after,
            },
        )
        process_job.using(run_after=run_after).enqueue(
            str(job.job_id), attempt=attempt + 1
        )
    logger.warning(
        "event=upscale_retry job_id=%s code=%s attempt=%d delay_seconds=%.1f",
        job.job_id,
        exc.code,
        attempt + 1,
        delay,
    )
    return "retrying"


def fail_job(job, code, detail):
    """Fail a processing job for good; the pipeline then refunds it."""
    try:
        with transaction.atomic():
            changed = job_manager.update_status(
                job.job_id,
                Status.FAILED,
                expected_status=Status.PROCESSING,
                actor=ACTOR,
                reason=code,
                failure_code=code[:64],
                failure_detail=str(detail)[:4000],
                next_poll_at=None,
                lease_owner="",
                lease_expires_at=None,
            )
            ProviderSubmission.objects.filter(job=job, state__in=OPEN_STATES).update(
                state=SubmissionState.ABANDONED, finished_at=timezone.now()
            )
    except (ConcurrentUpdate, InvalidTransition):
        return "superseded"
    signed_source.remove_provider_source(job)
    if changed:
        logger.error("event=upscale_failed job_id=%s code=%s", job.job_id, code)
    return "failed"
