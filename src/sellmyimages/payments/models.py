"""Refunds, each written before the payment provider is asked to pay it."""

import uuid

from django.db import models
from django.db.models import Q

from sellmyimages.jobs.models import Job


class RefundStatus(models.TextChoices):
    REQUESTED = "requested", "Requested"
    PENDING = "pending", "Pending at the provider"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


class RefundKind(models.TextChoices):
    AUTOMATIC = "automatic", "Automatic, after a failure"
    ADMIN = "admin", "Issued by an admin"
    EXTERNAL = "external", "Made outside the service"


class Refund(models.Model):
    # The id is also the idempotency key of every request to the provider,
    # so a retried or repeated request can never refund twice.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="refunds")
    kind = models.CharField(max_length=16, choices=RefundKind.choices)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=RefundStatus.choices, default=RefundStatus.REQUESTED
    )
    provider_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    actor = models.CharField(max_length=128, default="system")
    # When the provider reported the status stored here; a report older than
    # this one arrived out of order and is ignored.
    provider_state_at = models.DateTimeField(null=True, blank=True)
    # The provider's failure_reason for a failed or canceled refund.
    failure_reason = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["job"],
                condition=Q(kind="automatic"),
                name="one_automatic_refund_per_job",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self):
        return f"{self.amount} {self.currency} for {self.job.job_id} ({self.status})"


class EventOutcome(models.TextChoices):
    RECEIVED = "received", "Received, not processed yet"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored"
    FAILED = "failed", "Failed; the provider delivers it again"


class StripeEvent(models.Model):
    """A verified Stripe webhook event, stored once, with what processing it did."""

    event_id = models.CharField(max_length=255, unique=True)
    event_type = models.CharField(max_length=100)
    livemode = models.BooleanField(default=False)
    # Stripe's creation time of the event, not the time it arrived.
    created = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(
        max_length=16, choices=EventOutcome.choices, default=EventOutcome.RECEIVED
    )
    detail = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    job = models.ForeignKey(
        Job,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="stripe_events",
    )
    payload = models.JSONField()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["received_at"], name="stripeevent_received"),
            models.Index(fields=["outcome", "received_at"], name="stripeevent_outcome"),
        ]

    def __str__(self):
        return f"{self.event_type} {self.event_id} ({self.outcome})"


class Dispute(models.Model):
    """A chargeback the customer's bank opened on a job's payment."""

    dispute_id = models.CharField(max_length=255, unique=True)
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="disputes")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Dispute {self.dispute_id} on {self.job.job_id} ({self.status})"
