"""Endpoints that other systems register, and each delivery made to them."""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from sellmyimages.fetching import (
    BlockedAddress,
    FetchError,
    FetchPolicy,
    redact_url,
    validate_url,
)
from sellmyimages.hooks.signing import generate_secret, secret_key


class WebhookEvent(models.TextChoices):
    # The names of the WordPress actions of the original plugin.
    JOB_CREATED = "job_created", "Job created"
    PAYMENT_COMPLETED = "payment_completed", "Payment completed"
    JOB_COMPLETED = "job_completed", "Job completed"
    JOB_FAILED = "job_failed", "Job failed"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


def new_message_id():
    return f"msg_{uuid.uuid4().hex}"


def endpoint_policy():
    """Return the address rules that every webhook POST goes through."""
    return FetchPolicy(
        timeout_seconds=settings.SMI_WEBHOOK_TIMEOUT_SECONDS,
        connect_timeout_seconds=min(5.0, settings.SMI_WEBHOOK_TIMEOUT_SECONDS),
        max_redirects=0,
        allowed_addresses=frozenset(settings.SMI_FETCH_ALLOWED_ADDRESSES),
    )


class WebhookEndpoint(models.Model):
    """A URL that receives signed POSTs for the events it subscribes to."""

    url = models.URLField(
        "URL",
        max_length=2048,
        help_text="Receives a POST for each subscribed event. Private and "
        "loopback addresses are rejected unless listed in SMI_FETCH_ALLOWED_ADDRESSES.",
    )
    description = models.CharField(max_length=200, blank=True)
    events = models.JSONField(
        default=list, help_text="Event types this endpoint receives."
    )
    secret = models.CharField(
        max_length=100,
        default=generate_secret,
        help_text="Signing secret (Standard Webhooks whsec_ format); give it to the receiver.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return redact_url(self.url)

    def clean(self):
        if not isinstance(self.events, list) or not self.events:
            raise ValidationError({"events": "Choose at least one event."})
        unknown = [event for event in self.events if event not in WebhookEvent.values]
        if unknown:
            raise ValidationError(
                {
                    "events": f"{unknown[0]!r} is not one of {', '.join(WebhookEvent.values)}."
                }
            )
        try:
            validate_url(self.url, endpoint_policy())
        except BlockedAddress as exc:
            raise ValidationError(
                {"url": f"{exc} Add it to SMI_FETCH_ALLOWED_ADDRESSES to allow it."}
            ) from exc
        except FetchError as exc:
            raise ValidationError({"url": str(exc)}) from exc
        try:
            secret_key(self.secret)
        except ValueError as exc:
            raise ValidationError({"secret": str(exc)}) from exc

    def subscribes_to(self, event):
        return self.active and event in (self.events or [])


class WebhookDelivery(models.Model):
    """One event sent to one endpoint, retried until it succeeds or gives up."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.CharField(max_length=32, choices=WebhookEvent.choices)
    job_id = models.UUIDField(null=True, blank=True, db_index=True)
    # Sent as the webhook-id header; the same on every retry, so receivers
    # can drop a message they have already handled.
    msg_id = models.CharField(
        "message id", max_length=64, unique=True, default=new_message_id
    )
    # The exact JSON body that is signed and sent on every attempt.
    payload = models.TextField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    # The delivery gives up after this attempt; a resend moves it further.
    final_attempt = models.PositiveIntegerField(default=1)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    response_status_code = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["endpoint", "created_at"], name="delivery_endpoint_created"
            ),
            models.Index(
                fields=["status", "next_attempt_at"], name="delivery_status_next"
            ),
        ]

    def __str__(self):
        return f"{self.event} {self.msg_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """The request and response of one POST of a delivery."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    # delivered, http_error, timeout, connection_error, blocked or invalid_secret
    outcome = models.CharField(max_length=32)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number"], name="unique_delivery_attempt"
            )
        ]

    def __str__(self):
        return f"attempt {self.number}: {self.outcome}"
