"""Records of work sent to remote providers, and each provider's circuit."""

from django.db import models
from django.db.models import Q

from sellmyimages.jobs.models import Job


class SubmissionState(models.TextChoices):
    # Recorded before the HTTP request, so a crash leaves a trace.
    SENDING = "sending", "Sending"
    # The request may have reached the provider, but no job id came back.
    IN_DOUBT = "in_doubt", "In doubt"
    # The provider definitely did not start it (refused, 4xx, 5xx, 429).
    REJECTED = "rejected", "Rejected"
    ACCEPTED = "accepted", "Accepted"
    # A worker is fetching and checking the result.
    COLLECTING = "collecting", "Collecting result"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    # The job ended (completed by another submission, failed or timed out)
    # while this submission was still open.
    ABANDONED = "abandoned", "Abandoned"


# States in which the provider may still be working on the submission.
OPEN_STATES = (
    SubmissionState.SENDING,
    SubmissionState.IN_DOUBT,
    SubmissionState.ACCEPTED,
    SubmissionState.COLLECTING,
)


class ProviderSubmission(models.Model):
    """One attempt to have a remote provider upscale a job."""

    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, related_name="provider_submissions"
    )
    provider = models.CharField(max_length=32)
    # The job's attempt_count when this submission was made.
    attempt = models.PositiveIntegerField()
    state = models.CharField(
        max_length=16, choices=SubmissionState.choices, default=SubmissionState.SENDING
    )
    provider_job_id = models.CharField(max_length=255, null=True, blank=True)
    # SHA-256 of the secret in this submission's callback URL; the secret
    # itself is sent to the provider and never stored.
    webhook_secret_hash = models.CharField(max_length=64, unique=True)
    # SHA-256 of the signed source URL sent with this submission, which
    # identifies the provider's job when the provider can list its jobs.
    source_url_hash = models.CharField(max_length=64, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set while a worker collects the result; another worker may take over
    # once it is older than the result fetch timeout.
    collect_started_at = models.DateTimeField(null=True, blank=True)
    result_fetch_attempts = models.PositiveIntegerField(default=0)

    # Credits the provider quoted when it accepted the job, and the credits
    # it reported once the job finished.
    credits_quoted = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True
    )
    credits_charged = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True
    )
    provider_status = models.CharField(max_length=32, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)

    class Meta:
        ordering = ["job", "attempt"]
        constraints = [
            # One provider per attempt: failover is a new attempt, so a job is
            # never handed to two providers for the same attempt.
            models.UniqueConstraint(
                fields=["job", "attempt"], name="one_submission_per_attempt"
            ),
            models.UniqueConstraint(
                fields=["provider", "provider_job_id"],
                condition=Q(provider_job_id__isnull=False),
                name="unique_submission_provider_job_id",
            ),
        ]
        indexes = [
            models.Index(
                fields=["state", "updated_at"], name="submission_state_updated"
            )
        ]

    def __str__(self):
        return f"{self.provider} attempt {self.attempt} of {self.job_id} ({self.state})"


class CircuitState(models.Model):
    """The circuit breaker of one provider, shared by every worker process."""

    provider = models.CharField(max_length=32, unique=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # While set, the circuit is open until this time. After it, one attempt
    # at a time may probe the provider (half-open), moving the time forward.
    retry_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    last_failure_code = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        state = "open" if self.retry_at else "closed"
        return f"{self.provider} circuit {state} ({self.consecutive_failures} failures)"
