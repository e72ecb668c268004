"""Callback endpoints for remote providers: /webhooks/<provider>/<secret>.

Each submission's callback URL carries a random secret whose SHA-256 is
stored on the submission, so an unknown or wrong secret matches nothing.
The view only identifies the submission, records the callback and enqueues
confirm_callback, which requests the real status from the provider's API.
A callback body never completes or fails a job by itself.
"""

import hashlib
import hmac
import json
import logging

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sellmyimages.jobs.manager import job_manager
from sellmyimages.observability import metrics
from sellmyimages.upscaling.backends import get_upscaler
from sellmyimages.upscaling.backends.base import CallbackRejected
from sellmyimages.upscaling.models import ProviderSubmission

logger = logging.getLogger(__name__)

# Maximum secret length accepted; secrets.token_urlsafe(32) makes 43 characters.
MAX_SECRET_LENGTH = 128
# Callback body fields passed on to the confirming task. Only Upsampler's
# fallback mode, which cannot ask the status API, reads more than id and status.
FORWARDED_FIELDS = ("id", "status", "imageUrl", "creditCost", "error")


def hash_secret(secret):
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def find_submission(provider, secret):
    """Return the submission whose callback secret is `secret`, or None."""
    if len(secret) > MAX_SECRET_LENGTH:
        return None
    digest = hash_secret(secret)
    submission = (
        ProviderSubmission.objects.select_related("job")
        .filter(webhook_secret_hash=digest, provider=provider)
        .first()
    )
    if submission is None:
        return None
    # The lookup matched on the hash; comparing again in constant time keeps
    # the check independent of how the database compares strings.
    if not hmac.compare_digest(submission.webhook_secret_hash, digest):
        return None
    return submission


def forwarded_payload(payload):
    """Return the callback fields worth keeping, as short JSON scalars."""
    if not isinstance(payload, dict):
        return {}
    forwarded = {}
    for name in FORWARDED_FIELDS:
        value = payload.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            forwarded[name] = value
        elif isinstance(value, str):
            forwarded[name] = value[:2048]
        else:
            forwarded[name] = json.dumps(value)[:500]
    return forwarded


@csrf_exempt
@metrics.counts_webhooks(lambda provider, secret: provider)
@require_POST
def provider_callback(request, provider, secret):
    """Accept a provider's callback and hand it to a confirming task."""
    # Imported here because the tasks module imports the backends, which
    # import this app's models.
    from sellmyimages.upscaling.collect import confirm_callback

    submission = find_submission(provider, secret)
    if submission is None:
        logger.warning("event=provider_callback_unknown provider=%s", provider)
        return HttpResponse(
            "Unknown callback URL.\n", status=404, content_type="text/plain"
        )
    job_id = submission.job.job_id
    upscaler = get_upscaler(provider)
    try:
        upscaler.verify_callback(request)
    except CallbackRejected as exc:
        logger.warning(
            "event=provider_callback_rejected provider=%s job_id=%s error=%s",
            provider,
            job_id,
            exc,
        )
        job_manager.record_event(
            job_id, "provider_callback_rejected", actor="webhook", reason=str(exc)
        )
        return HttpResponse(
            "Invalid signature.\n", status=400, content_type="text/plain"
        )
    try:
        payload = json.loads(request.body)
    except ValueError:
        logger.warning(
            "event=provider_callback_invalid provider=%s job_id=%s", provider, job_id
        )
        return HttpResponse(
            "The body is not JSON.\n", status=400, content_type="text/plain"
        )
    forwarded = forwarded_payload(payload)
    reported_id = upscaler.callback_job_id(payload)
    job_manager.record_event(
        job_id,
        "provider_callback",
        actor="webhook",
        data={
            "provider": provider,
            "attempt": submission.attempt,
            "provider_job_id": reported_id,
            "status": str(forwarded.get("status", ""))[:32],
        },
    )
    confirm_callback.enqueue(submission.pk, reported_id, forwarded)
    logger.info(
        "event=provider_callback provider=%s job_id=%s attempt=%d",
        provider,
        job_id,
        submission.attempt,
    )
    return JsonResponse({"received": True}, status=202)
