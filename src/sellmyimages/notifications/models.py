"""A record of every email, claimed and marked sent in one transaction."""

from django.db import models

from sellmyimages.jobs.models import Job


class NotificationKind(models.TextChoices):
    DOWNLOAD_READY = "download_ready", "Download ready"
    REFUND_ISSUED = "refund_issued", "Refund issued"
    EXPIRY_REMINDER = "expiry_reminder", "Download expiring soon"
    ADMIN_JOB_FAILED = "admin_job_failed", "Job failed (to the admin)"
    ADMIN_REFUND_FAILED = "admin_refund_failed", "Refund failed (to the admin)"
    ADMIN_DISPUTE_OPENED = "admin_dispute_opened", "Dispute opened (to the admin)"


class Notification(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    # Tells apart messages of one kind that may legitimately repeat, such
    # as a refund email per refund; empty for once-per-job messages.
    dedupe_key = models.CharField(max_length=64, blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "kind", "dedupe_key"], name="one_notification_per_key"
            )
        ]

    def __str__(self):
        return f"{self.kind} for {self.job.job_id}"
