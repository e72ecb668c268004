"""Creating, signing, sending and retrying outgoing webhook deliveries.

Each event becomes one WebhookDelivery per subscribed endpoint, with its
JSON body fixed at creation. A task POSTs it, and an attempt without a 2xx
response is retried with exponential backoff and jitter until the
delivery's final attempt. Every attempt is recorded with its response.

Task runs claim an attempt number with a conditional UPDATE, so a task
that runs twice sends the attempt once.
"""

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sellmyimages.fetching import (
    FetchError,
    GuardedBackend,
    GuardedTransport,
    redact_url,
    validate_url,
)
from sellmyimages.hooks.models import (
    DeliveryAttempt,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    endpoint_policy,
)
from sellmyimages.hooks.signing import sign
from sellmyimages.observability import metrics

logger = logging.getLogger(__name__)

RESPONSE_EXCERPT_BYTES = 2000
USER_AGENT = "SellMyImages-Webhooks/1.0"


@dataclass(frozen=True)
class AttemptResult:
    outcome: str
    status_code: int | None = None
    response_body: str = ""
    error: str = ""
    duration_ms: int = 0

    @property
    def delivered(self):
        return self.outcome == "delivered"

    @property
    def retryable(self):
        # An address the policy rejects stays rejected until an operator
        # changes the endpoint or the settings, so retrying cannot help.
        return self.outcome not in ("delivered", "blocked", "invalid_secret")


def isoformat(value):
    return value.isoformat() if value else None


def build_payload(event, job):
    """Return the JSON body for an event about a job.

    It follows the Standard Webhooks payload shape (type, timestamp, data)
    and leaves out the customer's email, the download token and the source
    URL, which may be signed.
    """
    data = {
        "job_id": str(job.job_id),
        "status": job.status,
        "payment_status": job.payment_status,
        "resolution": job.resolution,
        "price": str(job.customer_price) if job.customer_price is not None else None,
        "currency": job.currency,
        "post_id": job.post_id,
        "attachment_id": job.attachment_id,
        "created_at": isoformat(job.created_at),
        "paid_at": isoformat(job.paid_at),
        "completed_at": isoformat(job.completed_at),
        "failed_at": isoformat(job.failed_at),
    }
    if job.failure_code:
        data["failure_code"] = job.failure_code
    document = {"type": event, "timestamp": timezone.now().isoformat(), "data": data}
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def create_deliveries(event, job):
    """Queue the event for every active endpoint that subscribes to it."""
    endpoints = [
        e for e in WebhookEndpoint.objects.filter(active=True) if e.subscribes_to(event)
    ]
    if not endpoints:
        return []
    payload = build_payload(event, job)
    with transaction.atomic():
        deliveries = [
            WebhookDelivery.objects.create(
                endpoint=endpoint,
                event=event,
                job_id=job.job_id,
                payload=payload,
                final_attempt=settings.SMI_WEBHOOK_MAX_ATTEMPTS,
                next_attempt_at=timezone.now(),
            )
            for endpoint in endpoints
        ]
        for delivery in deliveries:
            enqueue_attempt(delivery.pk, 1)
    for delivery in deliveries:
        logger.info(
            "event=webhook_queued job_id=%s webhook_event=%s msg_id=%s endpoint_id=%s",
            job.job_id,
            event,
            delivery.msg_id,
            delivery.endpoint_id,
        )
    return deliveries


def enqueue_attempt(delivery_pk, attempt, run_after=None):
    """Enqueue the task for an attempt once the current transaction commits."""
    from sellmyimages.hooks.tasks import deliver_webhook

    def enqueue():
        task = deliver_webhook
        if run_after is not None:
            task = task.using(run_after=run_after)
        task.enqueue(delivery_pk, attempt)

    transaction.on_commit(enqueue)


def claim(delivery_pk, attempt):
    """Return the delivery if this run owns `attempt`, else None."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_pk, status=DeliveryStatus.PENDING, attempts=attempt - 1
    ).update(attempts=attempt, last_attempt_at=now, next_attempt_at=None)
    if claimed != 1:
        return None
    return WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_pk)


def send_attempt(delivery_pk, attempt):
    """Run one attempt of a delivery; return its outcome or "not_claimed"."""
    delivery = claim(delivery_pk, attempt)
    if delivery is None:
        return "not_claimed"
    endpoint = delivery.endpoint
    if not endpoint.active:
        result = AttemptResult(
            outcome="endpoint_inactive", error="The endpoint is disabled."
        )
    else:
        result = post(endpoint, delivery)
    record_attempt(delivery, attempt, result)
    return result.outcome


def post(endpoint, delivery):
    """POST the delivery's payload to the endpoint through the guarded transport."""
    started = time.monotonic()
    body = delivery.payload.encode()
    timestamp = int(time.time())
    try:
        signature = sign(endpoint.secret, delivery.msg_id, timestamp, body)
    except ValueError as exc:
        return AttemptResult(outcome="invalid_secret", error=str(exc))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
    policy = endpoint_policy()

    def elapsed_ms():
        return int((time.monotonic() - started) * 1000)

    try:
        url = validate_url(endpoint.url, policy)
        backend = GuardedBackend(
            policy.allowed_ip_addresses(), time.monotonic() + policy.timeout_seconds
        )
        client = httpx.Client(
            transport=GuardedTransport(backend),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                policy.timeout_seconds, connect=policy.connect_timeout_seconds
            ),
        )
        with (
            client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            excerpt = read_excerpt(response)
            status_code = response.status_code
    except FetchError as exc:
        # The guarded backend raises these for addresses the policy rejects.
        return AttemptResult(
            outcome="blocked", error=str(exc), duration_ms=elapsed_ms()
        )
    except httpx.TimeoutException as exc:
        return AttemptResult(
            outcome="timeout",
            error=f"No answer within {policy.timeout_seconds}s ({type(exc).__name__}).",
            duration_ms=elapsed_ms(),
        )
    except httpx.HTTPError as exc:
        return AttemptResult(
            outcome="connection_error",
            error=f"{type(exc).__name__}: {exc}"[:1000],
            duration_ms=elapsed_ms(),
        )
    outcome = "delivered" if 200 <= status_code < 300 else "http_error"
    return AttemptResult(
        outcome=outcome,
        status_code=status_code,
        response_body=excerpt,
        error=(
            ""
            if outcome == "delivered"
            else f"The endpoint answered HTTP {status_code}."
        ),
        duration_ms=elapsed_ms(),
    )


def read_excerpt(response):
    """Return the start of the response body as text, reading no further."""
    received = bytearray()
    for chunk in response.iter_raw(1024):
        received.extend(chunk)
        if len(received) >= RESPONSE_EXCERPT_BYTES:
            break
    return bytes(received[:RESPONSE_EXCERPT_BYTES]).decode("utf-8", errors="replace")


def retry_delay(attempt):
    """Return the seconds to wait after a failed `attempt`, with jitter.

    The base doubles each attempt (30 s, 60 s, 120 s ... by default) up to
    a cap. A random factor between 0.5 and 1.5 then scales it, so that
    deliveries which failed together do not all retry together.
    """
    base = settings.SMI_WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    base = min(base, settings.SMI_WEBHOOK_RETRY_MAX_SECONDS)
    return base * (0.5 + random.random())


def record_attempt(delivery, attempt, result):
    """Store the attempt and its response, then schedule a retry or finish."""
    now = timezone.now()
    fields = {
        "response_status_code": result.status_code,
        "response_body": result.response_body,
        "last_error": result.error,
    }
    if result.delivered:
        fields.update(status=DeliveryStatus.SUCCEEDED, delivered_at=now)
    elif result.retryable and attempt < delivery.final_attempt:
        delay = retry_delay(attempt)
        fields.update(next_attempt_at=now + timedelta(seconds=delay))
    else:
        fields.update(status=DeliveryStatus.FAILED)
    with transaction.atomic():
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=attempt,
            started_at=delivery.last_attempt_at or now,
            duration_ms=result.duration_ms,
            outcome=result.outcome,
            status_code=result.status_code,
            response_body=result.response_body,
            error=result.error,
        )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
        if fields.get("next_attempt_at"):
            enqueue_attempt(
                delivery.pk, attempt + 1, run_after=fields["next_attempt_at"]
            )
    metrics.count_webhook_sent(delivery.event, result.outcome)
    log_attempt(delivery, attempt, result, fields)


def log_attempt(delivery, attempt, result, fields):
    if result.delivered:
        logger.info(
            "event=webhook_delivered job_id=%s msg_id=%s webhook_event=%s attempt=%d "
            "status_code=%s duration_ms=%d",
            delivery.job_id,
            delivery.msg_id,
            delivery.event,
            attempt,
            result.status_code,
            result.duration_ms,
        )
        return
    level = logging.WARNING if fields.get("next_attempt_at") else logging.ERROR
    logger.log(
        level,
        "event=webhook_attempt_failed job_id=%s msg_id=%s webhook_event=%s attempt=%d "
        "outcome=%s status_code=%s url=%s retry_at=%s error=%r",
        delivery.job_id,
        delivery.msg_id,
        delivery.event,
        attempt,
        result.outcome,
        result.status_code,
        redact_url(delivery.endpoint.url),
        isoformat(fields.get("next_attempt_at")) or "never",
        result.error,
    )


def resend(delivery, *, actor="admin"):
    """Send a delivery again now, with a fresh set of retries.

    Returns False if it is still waiting for an attempt, which will happen
    anyway.
    """
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        if (
            delivery.status == DeliveryStatus.PENDING
            and delivery.next_attempt_at is not None
        ):
            return False
        if delivery.status == DeliveryStatus.PENDING:
            # An attempt is running now, or its run was lost in a crash.
            in_flight_since = delivery.last_attempt_at or delivery.created_at
            if timezone.now() - in_flight_since < timedelta(
                seconds=settings.SMI_WEBHOOK_TIMEOUT_SECONDS * 2
            ):
                return False
        next_attempt = delivery.attempts + 1
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.PENDING,
            final_attempt=delivery.attempts + settings.SMI_WEBHOOK_MAX_ATTEMPTS,
            next_attempt_at=timezone.now(),
        )
        enqueue_attempt(delivery.pk, next_attempt)
    logger.info(
        "event=webhook_resend job_id=%s msg_id=%s attempt=%d actor=%s",
        delivery.job_id,
        delivery.msg_id,
        next_attempt,
        actor,
    )
    return True
