"""Handing a job's attempt to a remote provider."""

import hashlib
import logging
import secrets

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.upscaling import circuit, signed_source
from sellmyimages.upscaling.backends import get_upscaler
from sellmyimages.upscaling.backends.base import (
    ProviderError,
    ProviderState,
    Started,
    UpscaleError,
)
from sellmyimages.upscaling.collect import collect
from sellmyimages.upscaling.models import ProviderSubmission, SubmissionState
from sellmyimages.upscaling.remote import (
    ACTOR,
    DOUBTFUL_STATES,
    LIVE_STATES,
    adopt,
    fail_job,
    pinned_provider,
    poll_interval,
    processing_deadline,
    schedule_retry,
)
from sellmyimages.upscaling.watch import schedule_watch
from sellmyimages.upscaling.webhooks import hash_secret

logger = logging.getLogger(__name__)


def webhook_url(provider, secret):
    return settings.PUBLIC_BASE_URL + reverse(
        f"upscaling:{provider}-webhook", args=[secret]
    )


def choose_upscaler(job):
    """Return the engine for the job's current attempt, recording a switch."""
    pinned = pinned_provider(job)
    upscaler = circuit.choose_upscaler(job, pinned=pinned)
    if upscaler.name != job.provider:
        previous = job.provider
        if previous and circuit.is_open(previous):
            reason = f"the circuit of {previous!r} is open"
        else:
            reason = f"{previous!r} cannot take the job now"
        job_manager.update_job(
            job.job_id, actor=ACTOR, reason=reason, provider=upscaler.name
        )
        job_manager.record_event(
            job.job_id,
            "provider_failover",
            actor=ACTOR,
            reason=reason,
            data={"from": previous, "to": upscaler.name, "attempt": job.attempt_count},
        )
        logger.warning(
            "event=provider_failover job_id=%s from=%s to=%s",
            job.job_id,
            previous,
            upscaler.name,
        )
        job.provider = upscaler.name
    return upscaler


def submit(job, upscaler):
    """Send the job's current attempt to a remote provider; return the outcome."""
    if timezone.now() >= processing_deadline(job):
        return fail_job(
            job,
            "provider_timeout",
            f"The job was not done within {settings.SMI_PROVIDER_MAX_PROCESSING_MINUTES} minutes.",
        )
    if not upscaler.can_reconcile:
        note_resubmission(job, upscaler)
    try:
        source_path = signed_source.prepare_provider_source(job)
    except UpscaleError as exc:
        return fail_job(job, exc.code, str(exc))

    secret = secrets.token_urlsafe(32)
    attempt = job.attempt_count
    try:
        with transaction.atomic():
            submission = ProviderSubmission.objects.create(
                job=job,
                provider=upscaler.name,
                attempt=attempt,
                webhook_secret_hash=hash_secret(secret),
            )
            source_url = signed_source.source_url(submission, source_path)
            submission.source_url_hash = hashlib.sha256(source_url.encode()).hexdigest()
            submission.save(update_fields=["source_url_hash", "updated_at"])
            job_manager.record_event(
                job.job_id,
                "provider_submitting",
                actor=ACTOR,
                data={"provider": upscaler.name, "attempt": attempt},
            )
            # The watch task checks this submission even if this worker
            # dies during the request below.
            schedule_watch(job, poll_interval(0))
    except IntegrityError:
        # Another run made this attempt's submission. If that run died in
        # the request, only the watch task notices, so it is restarted.
        logger.warning(
            "event=submission_exists job_id=%s attempt=%d", job.job_id, attempt
        )
        with transaction.atomic():
            schedule_watch(job, 0)
        return "duplicate"

    logger.info(
        "event=provider_submitting job_id=%s provider=%s attempt=%d",
        job.job_id,
        upscaler.name,
        attempt,
    )
    try:
        status = upscaler.submit(
            job, source_url=source_url, webhook_url=webhook_url(upscaler.name, secret)
        )
    except ProviderError as exc:
        return submission_failed(job, submission, upscaler, exc)
    finally:
        upscaler.close()
    return submission_accepted(job, submission, upscaler, status)


def submission_accepted(job, submission, upscaler, status):
    now = timezone.now()
    try:
        with transaction.atomic():
            accepted = ProviderSubmission.objects.filter(
                pk=submission.pk, state__in=DOUBTFUL_STATES
            ).update(
                state=SubmissionState.ACCEPTED,
                provider_job_id=status.provider_job_id,
                accepted_at=now,
                credits_quoted=status.credits,
                provider_status=status.raw_status[:32],
            )
            if accepted:
                job_manager.update_job(
                    job.job_id,
                    actor=ACTOR,
                    reason=f"accepted by {upscaler.name}",
                    provider=upscaler.name,
                    provider_job_id=status.provider_job_id,
                )
                if status.credits is not None:
                    job_manager.update_cost_data(
                        job.job_id, actor=ACTOR, credits_charged=status.credits
                    )
    except IntegrityError:
        exc = ProviderError(
            "provider_bad_response",
            f"{upscaler.name} returned job id {status.provider_job_id!r}, "
            "which another submission already has.",
            transient=True,
            started=Started.UNKNOWN,
        )
        return submission_failed(job, submission, upscaler, exc)
    circuit.record_success(upscaler.name)
    logger.info(
        "event=provider_accepted job_id=%s provider=%s attempt=%d credits=%s",
        job.job_id,
        upscaler.name,
        submission.attempt,
        status.credits,
    )
    if not accepted:
        return "already_handled"
    if status.state != ProviderState.RUNNING:
        # The create response already carries the outcome.
        return collect(submission.pk, status, upscaler)
    return "submitted"


def submission_failed(job, submission, upscaler, exc):
    in_doubt = exc.started == Started.UNKNOWN
    ProviderSubmission.objects.filter(
        pk=submission.pk, state=SubmissionState.SENDING
    ).update(
        state=SubmissionState.IN_DOUBT if in_doubt else SubmissionState.REJECTED,
        error_code=exc.code,
        error_detail=str(exc)[:4000],
        finished_at=None if in_doubt else timezone.now(),
    )
    if exc.provider_fault:
        circuit.record_failure(upscaler.name, exc.code)
    job_manager.record_event(
        job.job_id,
        "provider_submit_failed",
        actor=ACTOR,
        reason=exc.code,
        data={
            "provider": upscaler.name,
            "attempt": submission.attempt,
            "transient": exc.transient,
            "may_have_started": in_doubt,
            "retry_after": exc.retry_after,
            "message": str(exc)[:300],
        },
    )
    logger.warning(
        "event=provider_submit_failed job_id=%s provider=%s attempt=%d code=%s "
        "transient=%s may_have_started=%s",
        job.job_id,
        upscaler.name,
        submission.attempt,
        exc.code,
        exc.transient,
        in_doubt,
    )
    if not exc.transient:
        return fail_job(job, exc.code, str(exc))
    return schedule_retry(job, exc)


def settle_earlier_submissions(job):
    """Deal with the job's earlier submissions before a new attempt starts.

    Return None when a new submission may be sent, or the task's outcome
    when it must not: a provider is already working on the job, or an
    in-doubt submission turned out to be live. An in-doubt submission is
    looked up at a provider that can list its jobs. If it started nothing
    there, it is closed and no longer pins the job to that provider.
    """
    if ProviderSubmission.objects.filter(job=job, state__in=LIVE_STATES).exists():
        # A callback adopted an earlier submission, or the recovery sweep
        # re-ran this step because the watch task was lost. Either way the
        # provider is on it, and the checks start again now.
        with transaction.atomic():
            schedule_watch(job, 0)
        return "already_submitted"
    doubtful = ProviderSubmission.objects.filter(
        job=job, state=SubmissionState.IN_DOUBT
    )
    for submission in doubtful.order_by("attempt"):
        upscaler = get_upscaler(submission.provider)
        if not upscaler.can_reconcile:
            continue
        outcome = reconcile(job, submission, upscaler)
        if outcome is not None:
            return outcome
    return None


def reconcile(job, submission, upscaler):
    """Look up an in-doubt submission at its provider; return an outcome or None."""
    try:
        status = upscaler.find_submission(submission.source_url_hash)
    except ProviderError as exc:
        logger.warning(
            "event=reconcile_failed job_id=%s provider=%s code=%s",
            job.job_id,
            upscaler.name,
            exc.code,
        )
        return schedule_retry(job, exc)
    finally:
        upscaler.close()
    if status is not None:
        if adopt(submission, status):
            return collect(submission.pk, status, upscaler)
        return None
    ProviderSubmission.objects.filter(
        pk=submission.pk, state=SubmissionState.IN_DOUBT
    ).update(state=SubmissionState.ABANDONED, finished_at=timezone.now())
    job_manager.record_event(
        job.job_id,
        "provider_submission_not_started",
        actor=ACTOR,
        data={"provider": upscaler.name, "attempt": submission.attempt},
    )
    return None


def note_resubmission(job, upscaler):
    """Record that a job is sent again while an earlier submission may be live.

    The provider cannot be asked whether the earlier request started a job,
    so the earlier submission stays open: its callback is still accepted,
    and whichever result is confirmed first completes the job.
    """
    if ProviderSubmission.objects.filter(
        job=job, provider=upscaler.name, state=SubmissionState.IN_DOUBT
    ).exists():
        job_manager.record_event(
            job.job_id,
            "provider_resubmitting",
            actor=ACTOR,
            reason=f"{upscaler.name} cannot be asked whether an earlier submission "
            "started, so the job is sent again",
            data={"provider": upscaler.name, "attempt": job.attempt_count},
        )
