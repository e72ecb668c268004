"""The job record and its append-only audit trail."""

import uuid

from django.db import models
from django.db.models import Q


class Status(models.TextChoices):
    AWAITING_PAYMENT = "awaiting_payment", "Awaiting payment"
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    ABANDONED = "abandoned", "Abandoned"


class PaymentStatus(models.TextChoices):
    UNPAID = "unpaid", "Unpaid"
    PAID = "paid", "Paid"
    REFUNDED = "refunded", "Refunded"
    PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"
    FAILED = "failed", "Failed"


class SourceKind(models.TextChoices):
    CATALOG = "catalog", "Catalog image"
    URL = "url", "Remote URL"


def money_field(**kwargs):
    return models.DecimalField(max_digits=12, decimal_places=2, **kwargs)


# Files a job owns: its output, and the copy of a remote source. A catalog
# source belongs to the shop and is never deleted.
HOLDS_FILES = ~Q(output_path="") | (Q(source_kind=SourceKind.URL) & ~Q(source_path=""))

# Partial indexes for the sweeps in sellmyimages.maintenance; each query
# there repeats its index's condition so that the planner can use it.
MAINTENANCE_INDEXES = [
    models.Index(
        fields=["updated_at"], condition=Q(status=Status.PENDING), name="job_pending_since"
    ),
    models.Index(
        fields=["lease_expires_at"],
        condition=Q(status=Status.PROCESSING),
        name="job_lease_expiry",
    ),
    models.Index(
        fields=["completed_at"],
        condition=Q(status=Status.COMPLETED, download_expires_at__isnull=True)
        & ~Q(output_path=""),
        name="job_undelivered",
    ),
    models.Index(
        fields=["download_expires_at"],
        condition=Q(status=Status.COMPLETED) & ~Q(output_path=""),
        name="job_download_expiry",
    ),
    models.Index(
        fields=["failed_at"], condition=Q(status=Status.FAILED), name="job_failed_at"
    ),
    models.Index(
        fields=["failed_at"],
        condition=Q(status=Status.FAILED) & HOLDS_FILES,
        name="job_failed_files",
    ),
    models.Index(
        fields=["abandoned_at"],
        condition=Q(status=Status.ABANDONED) & HOLDS_FILES,
        name="job_abandoned_files",
    ),
    models.Index(
        fields=["refunded_at"],
        condition=Q(refunded_at__isnull=False),
        name="job_refunded_at",
    ),
]


class Job(models.Model):
    job_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)

    source_kind = models.CharField(max_length=16, choices=SourceKind.choices)
    # A catalog image name (relative to the catalog folder) or the remote URL.
    source_ref = models.CharField(max_length=2048)
    # Local copy that the engines read; remote images are fetched once.
    source_path = models.CharField(max_length=1024, blank=True)
    source_width = models.PositiveIntegerField()
    source_height = models.PositiveIntegerField()
    source_format = models.CharField(max_length=16, blank=True)

    resolution = models.CharField(max_length=8)
    email = models.EmailField(blank=True)
    post_id = models.CharField(max_length=64, blank=True)
    attachment_id = models.CharField(max_length=64, blank=True)

    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.AWAITING_PAYMENT
    )
    payment_status = models.CharField(
        max_length=20, choices=PaymentStatus.choices, default=PaymentStatus.UNPAID
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    processing_started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    abandoned_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)

    payment_provider = models.CharField(max_length=32, blank=True)
    checkout_session_id = models.CharField(
        max_length=255, unique=True, null=True, blank=True
    )
    payment_intent_id = models.CharField(
        max_length=255, unique=True, null=True, blank=True
    )

    provider = models.CharField(max_length=32, blank=True)
    provider_job_id = models.CharField(max_length=255, null=True, blank=True)
    # When the worker next checks on a job that a remote provider is
    # processing; None when no check is scheduled.
    next_poll_at = models.DateTimeField(null=True, blank=True)

    currency = models.CharField(max_length=3, default="usd")
    customer_price = money_field(null=True, blank=True)
    provider_cost = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True
    )
    credits_required = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True
    )
    credits_charged = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True
    )
    markup_percentage = models.DecimalField(
        max_digits=7, decimal_places=2, null=True, blank=True
    )
    payment_fee = money_field(null=True, blank=True)
    refund_amount = money_field(null=True, blank=True)

    output_path = models.CharField(max_length=1024, blank=True)
    output_size = models.BigIntegerField(null=True, blank=True)
    output_width = models.PositiveIntegerField(null=True, blank=True)
    output_height = models.PositiveIntegerField(null=True, blank=True)
    output_sha256 = models.CharField(max_length=64, blank=True)
    output_format = models.CharField(max_length=16, blank=True)

    # SHA-256 of the download token; the token itself is never stored.
    download_token_hash = models.CharField(
        max_length=64, unique=True, null=True, blank=True
    )
    download_expires_at = models.DateTimeField(null=True, blank=True)
    download_count = models.PositiveIntegerField(default=0)
    last_downloaded_at = models.DateTimeField(null=True, blank=True)

    failure_code = models.CharField(max_length=64, blank=True)
    failure_detail = models.TextField(blank=True)
    attempt_count = models.PositiveIntegerField(default=0)
    # The worker run that is upscaling a processing job on this machine's
    # engine, and until when its hold lasts unless renewed. The recovery
    # sweep gives the job to another worker once the hold has lapsed.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_job_id"],
                condition=Q(provider_job_id__isnull=False),
                name="unique_provider_job_id",
            ),
            models.CheckConstraint(
                condition=Q(customer_price__isnull=True) | Q(customer_price__gte=0),
                name="customer_price_not_negative",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"], name="job_status_created"),
            models.Index(fields=["email"], name="job_email"),
            models.Index(fields=["created_at"], name="job_created"),
            *MAINTENANCE_INDEXES,
        ]

    def __str__(self):
        return f"{self.job_id} ({self.status})"

    @property
    def factor(self):
        return int(self.resolution.rstrip("x"))

    @property
    def is_download_ready(self):
        return self.status == Status.COMPLETED and bool(self.output_path)


class JobEvent(models.Model):
    """One entry of a job's audit trail: a status change or an action."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    event = models.CharField(max_length=64)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    actor = models.CharField(max_length=128, default="system")
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["job", "created_at"], name="jobevent_job_created")]

    def __str__(self):
        return f"{self.event} {self.from_status}->{self.to_status} by {self.actor}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("Job events are append-only and cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Job events are append-only and cannot be deleted.")
