"""The chain of checks that watches each job at a remote provider.

Every processing job at a provider has one pending watch_remote_job task,
due at Job.next_poll_at. It polls the provider in case no callback came,
lets another worker collect a result whose collector stopped, resends a
submission whose worker died, and fails the job at the deadline.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.tasks import task
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, Status
from sellmyimages.upscaling.backends import get_upscaler
from sellmyimages.upscaling.backends.base import (
    ProviderError,
    ProviderState,
    ProviderStatus,
    Started,
)
from sellmyimages.upscaling.collect import collect
from sellmyimages.upscaling.models import (
    OPEN_STATES,
    ProviderSubmission,
    SubmissionState,
)
from sellmyimages.upscaling.remote import (
    ACTOR,
    collect_lease,
    fail_job,
    in_doubt_after,
    poll_interval,
    processing_deadline,
    schedule_retry,
    seconds_setting,
)

logger = logging.getLogger(__name__)


def schedule_watch(job, delay, tick=0):
    """Make the job's next provider check due in `delay` seconds.

    Call inside a transaction: the new due time and its task commit together,
    and a watch task whose due time is no longer the job's does nothing, so
    each job has one chain of checks.
    """
    now = timezone.now()
    due = min(now + timedelta(seconds=delay), max(processing_deadline(job), now))
    # If this check's task is lost, the recovery sweep takes the job back
    # once the hold lapses: process_job then restarts the checks.
    hold_until = due + timedelta(
        seconds=seconds_setting("SMI_PROVIDER_POLL_MAX_SECONDS") + 60
    )
    if job_manager.set_next_poll_at(job.job_id, due, hold_until=hold_until):
        watch_remote_job.using(run_after=due).enqueue(
            str(job.job_id), due.isoformat(), tick
        )
    return due


@task()
def watch_remote_job(job_id, due, tick=0):
    """Poll a job's provider, recover lost submissions, enforce the deadline."""
    job = Job.objects.filter(job_id=job_id).first()
    if job is None or job.status != Status.PROCESSING:
        return "finished"
    due_at = datetime.fromisoformat(due)
    if job.next_poll_at != due_at:
        return "stale"
    outcome = check_job(job)
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status == Status.PROCESSING and locked.next_poll_at == due_at:
            schedule_watch(locked, poll_interval(tick + 1), tick + 1)
    return outcome


def check_job(job):
    """Look at each open submission of a processing job once."""
    now = timezone.now()
    submissions = list(
        ProviderSubmission.objects.filter(job=job, state__in=OPEN_STATES).order_by(
            "attempt"
        )
    )
    # A finished result is collected even when the deadline has just passed.
    for submission in submissions:
        if submission.state == SubmissionState.COLLECTING:
            release_expired_lease(submission, now)
        if submission.state == SubmissionState.ACCEPTED:
            outcome = poll(job, submission)
            if outcome in ("completed", "failed", "retrying"):
                return outcome
    job.refresh_from_db()
    if job.status != Status.PROCESSING:
        return "finished"
    if any(s.state == SubmissionState.COLLECTING for s in submissions):
        # A worker is storing a result under a lease that ends on its own,
        # so the deadline waits for it rather than throw the result away.
        return "collecting"
    if now >= processing_deadline(job):
        minutes = settings.SMI_PROVIDER_MAX_PROCESSING_MINUTES
        return fail_job(
            job,
            "provider_timeout",
            f"The provider returned no result within {minutes} minutes.",
        )
    for submission in submissions:
        stuck = submission.state == SubmissionState.SENDING and (
            submission.created_at < now - in_doubt_after()
        )
        if stuck and submission.attempt == job.attempt_count:
            return recover_interrupted(job, submission)
    return "waiting"


def release_expired_lease(submission, now):
    """Let another worker collect a result whose collector stopped."""
    started = submission.collect_started_at
    if started is None or started >= now - collect_lease():
        return
    released = ProviderSubmission.objects.filter(
        pk=submission.pk, state=SubmissionState.COLLECTING, collect_started_at=started
    ).update(state=SubmissionState.ACCEPTED, collect_started_at=None)
    if released:
        submission.state = SubmissionState.ACCEPTED
        logger.warning(
            "event=collect_lease_expired job_id=%s attempt=%d",
            submission.job_id,
            submission.attempt,
        )


def recover_interrupted(job, submission):
    """Handle a submission whose worker stopped during the HTTP request."""
    marked = ProviderSubmission.objects.filter(
        pk=submission.pk, state=SubmissionState.SENDING
    ).update(
        state=SubmissionState.IN_DOUBT,
        error_code="submission_interrupted",
        error_detail="The worker stopped before the provider's answer was recorded.",
    )
    if not marked:
        return "waiting"
    exc = ProviderError(
        "submission_interrupted",
        f"The submission to {submission.provider} was interrupted.",
        transient=True,
        started=Started.UNKNOWN,
    )
    job_manager.record_event(
        job.job_id,
        "provider_submit_failed",
        actor=ACTOR,
        reason=exc.code,
        data={"provider": submission.provider, "attempt": submission.attempt},
    )
    return schedule_retry(job, exc)


def poll(job, submission):
    """Ask the provider for an accepted submission's status and act on it."""
    upscaler = get_upscaler(submission.provider)
    if not upscaler.can_poll:
        return "waiting"
    try:
        status = upscaler.get_status(submission.provider_job_id)
    except ProviderError as exc:
        if exc.code != "provider_job_not_found":
            logger.warning(
                "event=provider_poll_failed job_id=%s provider=%s code=%s",
                job.job_id,
                submission.provider,
                exc.code,
            )
            return "waiting"
        status = ProviderStatus(
            provider_job_id=submission.provider_job_id,
            state=ProviderState.FAILED,
            raw_status="NOT_FOUND",
            error=str(exc),
        )
    finally:
        upscaler.close()
    return collect(submission.pk, status, upscaler)


# Recovery of lost chains.


def overdue_jobs(now=None):
    """Return processing jobs whose provider check is overdue by a poll interval."""
    now = now or timezone.now()
    grace = timedelta(seconds=seconds_setting("SMI_PROVIDER_POLL_MAX_SECONDS"))
    return Job.objects.filter(
        status=Status.PROCESSING, next_poll_at__lt=now - grace
    ).order_by("next_poll_at")


def recover_overdue_jobs(*, limit):
    """Restart the watch of up to `limit` jobs whose check task was lost.

    A worker killed in the middle of a task leaves that task marked running,
    so the chain of checks of its job stops. This starts a new chain for
    each such job and returns how many it started.
    """
    count = 0
    for job in overdue_jobs()[:limit]:
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(pk=job.pk)
            if (
                locked.status != Status.PROCESSING
                or locked.next_poll_at != job.next_poll_at
            ):
                continue
            schedule_watch(locked, 0)
        logger.warning("event=watch_restarted job_id=%s", job.job_id)
        count += 1
    return count
