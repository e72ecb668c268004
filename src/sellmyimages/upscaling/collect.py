"""Acting on a provider's confirmed status: wait, retry, fail or complete."""

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.tasks import task
from django.utils import timezone

from sellmyimages.jobs.exceptions import ConcurrentUpdate, InvalidTransition
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Status
from sellmyimages.upscaling import circuit, results, signed_source
from sellmyimages.upscaling.backends import get_upscaler
from sellmyimages.upscaling.backends.base import ProviderError, ProviderState
from sellmyimages.upscaling.backends.http import classify_message
from sellmyimages.upscaling.models import (
    OPEN_STATES,
    ProviderSubmission,
    SubmissionState,
)
from sellmyimages.upscaling.remote import (
    ACTOR,
    DOUBTFUL_STATES,
    adopt,
    fail_job,
    schedule_retry,
)

logger = logging.getLogger(__name__)

# Result problems that are retried once with a new submission, then final.
BAD_RESULT_CODES = (
    "result_missing",
    "result_too_large",
    "result_unavailable",
    "result_not_an_image",
    "result_wrong_size",
    "result_corrupt",
)


@task()
def confirm_callback(submission_id, reported_job_id, payload):
    """Act on a provider's callback after confirming it with the provider's API."""
    submission = (
        ProviderSubmission.objects.select_related("job")
        .filter(pk=submission_id)
        .first()
    )
    if submission is None:
        return "unknown"
    job = submission.job
    if job.status != Status.PROCESSING or submission.state not in OPEN_STATES:
        return ignore_callback(
            submission, f"the job is {job.status} and the submission {submission.state}"
        )
    known_id = submission.provider_job_id
    if known_id and reported_job_id and reported_job_id != known_id:
        return ignore_callback(submission, "the callback names another provider job")
    provider_job_id = known_id or reported_job_id
    if not provider_job_id:
        return ignore_callback(submission, "the callback names no provider job")

    upscaler = get_upscaler(submission.provider)
    try:
        status = upscaler.confirm_callback(provider_job_id, payload)
    except ProviderError as exc:
        logger.warning(
            "event=provider_callback_unconfirmed job_id=%s provider=%s code=%s",
            job.job_id,
            submission.provider,
            exc.code,
        )
        job_manager.record_event(
            job.job_id, "provider_callback_unconfirmed", actor=ACTOR, reason=exc.code
        )
        # The job's watch task polls again at its next check.
        return "unconfirmed"
    finally:
        upscaler.close()
    if not known_id:
        if not adopt(submission, status):
            return ignore_callback(submission, "the submission could not be adopted")
    return collect(submission.pk, status, upscaler)


def ignore_callback(submission, reason):
    job_manager.record_event(
        submission.job.job_id,
        "provider_callback_ignored",
        actor=ACTOR,
        reason=reason,
        data={"provider": submission.provider, "attempt": submission.attempt},
    )
    logger.info(
        "event=provider_callback_ignored job_id=%s provider=%s reason=%r",
        submission.job.job_id,
        submission.provider,
        reason,
    )
    return "ignored"


def collect(submission_id, status, upscaler):
    """Act on a confirmed status: wait, resubmit, fail, or store the result."""
    submission = ProviderSubmission.objects.select_related("job").get(pk=submission_id)
    job = submission.job
    if status.raw_status:
        ProviderSubmission.objects.filter(pk=submission.pk).update(
            provider_status=status.raw_status[:32]
        )
    if job.status != Status.PROCESSING:
        return "finished"
    if status.state == ProviderState.RUNNING:
        return "running"
    if status.state == ProviderState.FAILED:
        return provider_failed(job, submission, upscaler, status)
    return collect_result(job, submission, upscaler, status)


def provider_failed(job, submission, upscaler, status):
    kind = classify_message(status.error)
    permanent = kind == "input" and status.confirmed
    if permanent:
        code = "provider_rejected_input"
    elif kind == "account":
        code = "provider_account_error"
    else:
        code = "provider_job_failed"
    closed = ProviderSubmission.objects.filter(
        pk=submission.pk, state__in=(SubmissionState.ACCEPTED, *DOUBTFUL_STATES)
    ).update(
        state=SubmissionState.FAILED,
        finished_at=timezone.now(),
        error_code=code,
        error_detail=status.error[:4000],
        credits_charged=status.credits,
    )
    if not closed:
        return "already_handled"
    if kind == "account":
        circuit.record_failure(submission.provider, code)
    job_manager.record_event(
        job.job_id,
        "provider_job_failed",
        actor=ACTOR,
        reason=code,
        data={
            "provider": submission.provider,
            "attempt": submission.attempt,
            "provider_job_id": submission.provider_job_id,
            "error": status.error[:300],
            "confirmed": status.confirmed,
        },
    )
    logger.warning(
        "event=provider_job_failed job_id=%s provider=%s attempt=%d code=%s",
        job.job_id,
        submission.provider,
        submission.attempt,
        code,
    )
    if permanent:
        return fail_job(job, code, status.error)
    if ProviderSubmission.objects.filter(job=job, state__in=OPEN_STATES).exists():
        # Another attempt is already under way.
        return "waiting"
    return schedule_retry(job, ProviderError(code, status.error, transient=True))


def collect_result(job, submission, upscaler, status):
    lease_taken = ProviderSubmission.objects.filter(
        pk=submission.pk, state__in=(SubmissionState.ACCEPTED, *DOUBTFUL_STATES)
    ).update(
        state=SubmissionState.COLLECTING,
        collect_started_at=timezone.now(),
        result_fetch_attempts=F("result_fetch_attempts") + 1,
    )
    if not lease_taken:
        # Another worker is collecting it, or it is already finished.
        return "busy"
    submission.refresh_from_db()
    try:
        stored = results.fetch_result(
            job,
            status.result_url,
            allowed_hosts=upscaler.result_hosts(),
            name=f"{job.job_id}-{submission.attempt}",
        )
    except results.ResultError as exc:
        return result_failed(job, submission, exc)
    return complete(job, submission, status, stored)


def result_failed(job, submission, exc):
    retry_fetch = (
        exc.kind == results.ResultError.RETRY_FETCH
        and submission.result_fetch_attempts < settings.SMI_PROVIDER_MAX_ATTEMPTS
    )
    ProviderSubmission.objects.filter(
        pk=submission.pk, state=SubmissionState.COLLECTING
    ).update(
        state=SubmissionState.ACCEPTED if retry_fetch else SubmissionState.FAILED,
        collect_started_at=None,
        finished_at=None if retry_fetch else timezone.now(),
        error_code=exc.code,
        error_detail=str(exc)[:4000],
    )
    job_manager.record_event(
        job.job_id,
        "result_fetch_retry" if retry_fetch else "result_rejected",
        actor=ACTOR,
        reason=exc.code,
        data={
            "provider": submission.provider,
            "attempt": submission.attempt,
            "fetch_attempts": submission.result_fetch_attempts,
            "message": str(exc)[:300],
        },
    )
    logger.warning(
        "event=result_failed job_id=%s provider=%s attempt=%d code=%s will_refetch=%s",
        job.job_id,
        submission.provider,
        submission.attempt,
        exc.code,
        retry_fetch,
    )
    if retry_fetch:
        # The job's next watch task requests the status again, which also
        # renews a result URL that expires.
        # NOTE: with UPSAMPLER_CONFIRM_WITH_STATUS_API off there is no status
        # to ask, so the fetch is retried only if Upsampler calls back again.
        return "fetch_retry"
    if exc.kind != results.ResultError.BAD_RESULT:
        return fail_job(job, exc.code, str(exc))
    earlier_bad = (
        ProviderSubmission.objects.filter(
            job=job,
            state=SubmissionState.FAILED,
            error_code__in=BAD_RESULT_CODES,
            created_at__gte=job.processing_started_at,
        )
        .exclude(pk=submission.pk)
        .exists()
    )
    if earlier_bad:
        return fail_job(job, exc.code, str(exc))
    return schedule_retry(job, ProviderError(exc.code, str(exc), transient=True))


def complete(job, submission, status, stored):
    """Record a stored result and complete the job, in one transaction."""
    now = timezone.now()
    try:
        with transaction.atomic():
            ProviderSubmission.objects.filter(pk=submission.pk).update(
                state=SubmissionState.SUCCEEDED,
                finished_at=now,
                collect_started_at=None,
                credits_charged=status.credits,
            )
            job_manager.record_event(
                job.job_id,
                "provider_result",
                actor=ACTOR,
                data={
                    "provider": submission.provider,
                    "attempt": submission.attempt,
                    "provider_job_id": submission.provider_job_id,
                    "credits": None if status.credits is None else str(status.credits),
                    **status.metrics,
                },
            )
            if status.credits is not None:
                job_manager.update_cost_data(
                    job.job_id, actor=ACTOR, credits_charged=status.credits
                )
            job_manager.update_status(
                job.job_id,
                Status.COMPLETED,
                expected_status=Status.PROCESSING,
                actor=ACTOR,
                reason=f"upscaled by {submission.provider}",
                provider=submission.provider,
                provider_job_id=submission.provider_job_id,
                output_path=str(stored.path),
                output_size=stored.size_bytes,
                output_width=stored.width,
                output_height=stored.height,
                output_sha256=stored.sha256,
                output_format=stored.format,
                next_poll_at=None,
                lease_owner="",
                lease_expires_at=None,
            )
            ProviderSubmission.objects.filter(job=job, state__in=OPEN_STATES).update(
                state=SubmissionState.ABANDONED, finished_at=now
            )
    except (ConcurrentUpdate, InvalidTransition):
        # The job failed (the deadline passed) while the result was fetched.
        stored.path.unlink(missing_ok=True)
        ProviderSubmission.objects.filter(pk=submission.pk).update(
            state=SubmissionState.ABANDONED, finished_at=now
        )
        return "too_late"
    circuit.record_success(submission.provider)
    signed_source.remove_provider_source(job)
    warn_if_over_quote(job, submission, status)
    logger.info(
        "event=job_upscaled job_id=%s provider=%s attempt=%d output_bytes=%d",
        job.job_id,
        submission.provider,
        submission.attempt,
        stored.size_bytes,
    )
    return "completed"


def warn_if_over_quote(job, submission, status):
    """Record when the provider charged more credits than the job's quote."""
    quoted = job.credits_required
    if status.credits is None or quoted is None or status.credits <= quoted:
        return
    job_manager.record_event(
        job.job_id,
        "credits_over_quote",
        actor=ACTOR,
        reason=f"{submission.provider} charged {status.credits} credits, quoted {quoted}",
        data={"quoted": str(quoted), "charged": str(status.credits)},
    )
    logger.warning(
        "event=credits_over_quote job_id=%s provider=%s quoted=%s charged=%s",
        job.job_id,
        submission.provider,
        quoted,
        status.credits,
    )
