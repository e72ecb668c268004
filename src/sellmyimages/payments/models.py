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
