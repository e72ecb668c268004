"""The Job Manager: the only code that changes a job.

Every change runs in a transaction that also writes a JobEvent, so the
audit trail and the job never disagree. Status changes are checked against
the transition table and applied with a row lock plus a conditional UPDATE,
so two processes racing to move one job cannot both succeed. Signals and
follow-up tasks are sent only after the transaction commits.
"""

import datetime
import hashlib
import logging
import secrets
import uuid
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Case, DecimalField, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from sellmyimages import shopsettings
from sellmyimages.jobs import signals
from sellmyimages.jobs.exceptions import (
    ConcurrentUpdate,
    InvalidTransition,
    JobError,
    JobNotFound,
    JobValidationError,
)
from sellmyimages.jobs.lifecycle import (
    REFUNDED_PAYMENT_STATUSES,
    STATUS_TIMESTAMPS,
    transition_error,
)
from sellmyimages.jobs.models import Job, JobEvent, PaymentStatus, SourceKind, Status
from sellmyimages.jobs.pricing import calculate_quote, parse_factor

logger = logging.getLogger(__name__)

ORDERABLE_FIELDS = {
    "created_at",
    "updated_at",
    "paid_at",
    "completed_at",
    "failed_at",
    "status",
    "payment_status",
    "customer_price",
    "resolution",
    "download_expires_at",
}

# Fields that update_job may set. Status, payment references and tokens have
# their own methods because each carries rules of its own.
UPDATABLE_FIELDS = {
    "email",
    "post_id",
    "attachment_id",
    "source_path",
    "provider",
    "provider_job_id",
    "next_poll_at",
    "output_path",
    "output_size",
    "output_width",
    "output_height",
    "output_sha256",
    "output_format",
    "download_expires_at",
    "failure_code",
    "failure_detail",
    "attempt_count",
    "lease_owner",
    "lease_expires_at",
    "payment_provider",
    "payment_status",
    "refunded_at",
}

COST_FIELDS = {
    "provider_cost",
    "customer_price",
    "credits_required",
    "credits_charged",
    "markup_percentage",
    "payment_fee",
    "refund_amount",
}

TOKEN_BYTES = 32  # 64 hexadecimal characters

# The fields that the admin's search box and `smi jobs list --search` match.
SEARCH_FIELDS = (
    "job_id",
    "email",
    "checkout_session_id",
    "payment_intent_id",
    "provider_job_id",
)

# The failure code of a job that an operator marked failed; the operator's
# reason is in failure_detail and in the audit trail.
OPERATOR_FAILURE_CODE = "failed_by_operator"
MAX_EXTEND_HOURS = 24 * 365
# Descriptions of the results of JobManager.retry, for operators.
RETRY_RESULTS = {
    "pending": "moved back to pending; processing is enqueued",
    "requeued": "processing is enqueued again",
    "rerun": "processing runs again under a new attempt number",
}
# Payment statuses of jobs that took a payment, whose margin means something.
EARNING_PAYMENT_STATUSES = (
    PaymentStatus.PAID,
    PaymentStatus.PARTIALLY_REFUNDED,
    PaymentStatus.REFUNDED,
)
REFUND_REASON_MAX_LENGTH = 255


class ActionNotAllowed(JobError):
    """An operator action does not apply to the job in its current state."""

    def __init__(self, action, job, reason, code="not_applicable"):
        self.action = action
        self.job_id = job.job_id
        # A short name of the reason, for callers that word it themselves.
        self.code = code
        super().__init__(f"Cannot {action} job {job.job_id}: {reason}.")


def day_bounds(first_day=None, last_day=None):
    """Return (created_after, created_before) covering whole days, both included.

    Days are dates in the site's time zone (TIME_ZONE, UTC by default);
    either may be None for an open end.
    """
    zone = timezone.get_current_timezone()
    created_after = created_before = None
    if first_day is not None:
        created_after = datetime.datetime.combine(
            first_day, datetime.time.min, tzinfo=zone
        )
    if last_day is not None:
        next_day = last_day + timedelta(days=1)
        created_before = datetime.datetime.combine(
            next_day, datetime.time.min, tzinfo=zone
        )
    return created_after, created_before


def annotate_money(jobs):
    """Add total_cost and margin_amount to each job of the QuerySet `jobs`.

    total_cost is the provider cost plus the payment provider's fee.
    margin_amount is the price less refunds and total_cost, for jobs that
    took a payment, and None for the others.
    """
    money = DecimalField(max_digits=14, decimal_places=4)
    zero = Value(Decimal("0"), output_field=money)
    cost = Coalesce(F("provider_cost"), zero) + Coalesce(F("payment_fee"), zero)
    earned = Coalesce(F("customer_price"), zero) - Coalesce(F("refund_amount"), zero)
    return jobs.annotate(
        total_cost=ExpressionWrapper(cost, output_field=money),
        margin_amount=Case(
            When(payment_status__in=EARNING_PAYMENT_STATUSES, then=earned - cost),
            default=None,
            output_field=money,
        ),
    )


def hash_token(token):
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class JobManager:
    """Create, query and change jobs; every method records who acted."""

    # Creation and queries

    def create_job(
        self,
        *,
        resolution,
        source_kind,
        source_ref,
        source_path,
        source_width,
        source_height,
        source_format="",
        email="",
        post_id="",
        attachment_id="",
        payment_provider="",
        actor="system",
    ):
        """Create a job awaiting payment, priced from the measured size.

        Callers pass dimensions they measured themselves from the file at
        source_path (see sellmyimages.catalog.images); the price is computed
        here and never taken from a caller.
        """
        resolution = self.validate_resolution(resolution)
        email = self.validate_email(email)
        if source_kind not in SourceKind.values:
            raise JobValidationError(
                "source_kind",
                f"{source_kind!r} is not one of {', '.join(SourceKind.values)}.",
            )
        for field, value in (("source_width", source_width), ("source_height", source_height)):
            if not isinstance(value, int) or value < 1:
                raise JobValidationError(field, f"{value!r} is not a positive integer.")
        for field, value in (("post_id", post_id), ("attachment_id", attachment_id)):
            if len(str(value)) > 64:
                raise JobValidationError(field, "is longer than 64 characters.")

        quote = calculate_quote(source_width, source_height, resolution)
        with transaction.atomic():
            job = Job.objects.create(
                source_kind=source_kind,
                source_ref=source_ref,
                source_path=str(source_path),
                source_width=source_width,
                source_height=source_height,
                source_format=source_format,
                resolution=resolution,
                email=email,
                post_id=str(post_id or ""),
                attachment_id=str(attachment_id or ""),
                payment_provider=payment_provider,
                currency=quote.currency,
                customer_price=quote.price,
                provider_cost=quote.provider_cost,
                credits_required=quote.credits,
                markup_percentage=quote.markup_percentage,
            )
            self._record(
                job,
                "job_created",
                actor=actor,
                to_status=job.status,
                data={"resolution": resolution, "price": str(quote.price)},
            )
            self._send_after_commit(signals.job_created, job)
        logger.info(
            "event=job_created job_id=%s resolution=%s price=%s",
            job.job_id,
            resolution,
            quote.price,
        )
        return job

    def get_job(self, job_id):
        try:
            return Job.objects.get(job_id=self._parse_job_id(job_id))
        except Job.DoesNotExist:
            raise JobNotFound(job_id) from None

    def get_jobs(
        self,
        *,
        status=None,
        payment_status=None,
        limit=20,
        offset=0,
        order_by="-created_at",
        email=None,
        created_after=None,
        created_before=None,
    ):
        """Return a list of jobs matching the filters, newest first by default."""
        jobs = Job.objects.all()
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            for value in statuses:
                if value not in Status.values:
                    raise JobValidationError(
                        "status", f"{value!r} is not one of {', '.join(Status.values)}."
                    )
            jobs = jobs.filter(status__in=statuses)
        if payment_status:
            jobs = jobs.filter(payment_status=payment_status)
        if email:
            jobs = jobs.filter(email__iexact=email)
        if created_after:
            jobs = jobs.filter(created_at__gte=self._aware(created_after, "created_after"))
        if created_before:
            jobs = jobs.filter(created_at__lt=self._aware(created_before, "created_before"))

        if order_by.lstrip("-") not in ORDERABLE_FIELDS:
            raise JobValidationError(
                "order_by",
                f"{order_by!r} is not one of {', '.join(sorted(ORDERABLE_FIELDS))}.",
            )
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise JobValidationError("limit", f"{limit!r} is not between 1 and 1000.")
        if not isinstance(offset, int) or offset < 0:
            raise JobValidationError("offset", f"{offset!r} is not zero or more.")
        return list(jobs.order_by(order_by, "-id")[offset : offset + limit])

    # Status changes

    def update_status(
        self, job_id, status, *, actor="system", reason="", expected_status=None, **data
    ):
        """Move a job to `status`; return False if it already had it.

        `data` may set any field update_job accepts, in the same
        transaction. With `expected_status`, the change happens only if the
        job is still in that status, so a caller can claim a step.
        """
        self._check_fields(data, UPDATABLE_FIELDS)
        _job, changed = self._transition(
            job_id,
            status,
            actor=actor,
            reason=reason,
            fields=data,
            expected_status=expected_status,
        )
        return changed

    def mark_payment_completed(
        self, job_id, payment_intent_id, *, actor="system", email="", amount=None
    ):
        """Record a confirmed payment and start processing.

        Safe to call any number of times for the same payment: a job that
        is already paid with this payment reference is left alone. A job
        that was abandoned is revived, since the customer did pay.
        """
        if not payment_intent_id:
            raise JobValidationError("payment_intent_id", "must not be empty.")
        email = self.validate_email(email) if email else ""
        with transaction.atomic():
            job = self._locked(job_id)
            if job.payment_status != PaymentStatus.UNPAID:
                if job.payment_intent_id == payment_intent_id:
                    return False
                raise InvalidTransition(
                    job.status,
                    Status.PENDING,
                    f"the job was already paid with another payment ({job.payment_status})",
                )
            fields = {
                "payment_status": PaymentStatus.PAID,
                "payment_intent_id": payment_intent_id,
                "paid_at": timezone.now(),
            }
            if email and not job.email:
                fields["email"] = email
            data = {"payment_intent_id": payment_intent_id}
            if amount is not None:
                data["amount"] = str(amount)
            try:
                job, _changed = self._transition(
                    job,
                    Status.PENDING,
                    actor=actor,
                    reason="payment completed",
                    fields=fields,
                    event="payment_completed",
                    data=data,
                )
            except IntegrityError:
                raise JobValidationError(
                    "payment_intent_id", "is already recorded on another job."
                ) from None
            self._send_after_commit(signals.payment_completed, job)
        return True

    def mark_failed(self, job_id, reason, *, detail="", actor="system"):
        """Fail a job with a short reason code; a paid job is then refunded."""
        if not reason or len(reason) > 64:
            raise JobValidationError("reason", "must be a code of 1 to 64 characters.")
        _job, changed = self._transition(
            job_id,
            Status.FAILED,
            actor=actor,
            reason=reason,
            fields={"failure_code": reason, "failure_detail": detail[:4000]},
        )
        return changed

    def _transition(
        self,
        job_or_id,
        to_status,
        *,
        actor,
        reason="",
        fields=None,
        expected_status=None,
        event="status_changed",
        data=None,
    ):
        if to_status not in Status.values:
            raise JobValidationError(
                "status", f"{to_status!r} is not one of {', '.join(Status.values)}."
            )
        with transaction.atomic():
            if isinstance(job_or_id, Job):
                job = job_or_id
            else:
                job = self._locked(job_or_id)
            from_status = job.status
            if expected_status is not None and from_status != expected_status:
                if from_status == to_status:
                    return job, False
                raise ConcurrentUpdate(
                    from_status, to_status, f"it is no longer {expected_status!r}"
                )
            if from_status == to_status:
                return job, False
            problem = transition_error(job, to_status)
            if problem:
                raise InvalidTransition(from_status, to_status, problem)

            now = timezone.now()
            updates = dict(fields or {})
            updates["status"] = to_status
            updates["updated_at"] = now
            if to_status in STATUS_TIMESTAMPS:
                updates[STATUS_TIMESTAMPS[to_status]] = now
            if to_status == Status.PENDING:
                updates.setdefault("failure_code", "")
                updates.setdefault("failure_detail", "")
            # The status in the WHERE clause makes this a compare-and-set even
            # on databases where the row lock above is a no-op.
            updated = Job.objects.filter(pk=job.pk, status=from_status).update(**updates)
            if updated != 1:
                raise ConcurrentUpdate(from_status, to_status, "another process changed it")
            for name, value in updates.items():
                setattr(job, name, value)
            self._record(
                job,
                event,
                actor=actor,
                from_status=from_status,
                to_status=to_status,
                reason=reason,
                data=data,
            )
            self._after_transition(job, from_status, to_status, reason)
        logger.info(
            "event=%s job_id=%s from_status=%s to_status=%s actor=%s",
            event,
            job.job_id,
            from_status,
            to_status,
            actor,
        )
        return job, True

    def _after_transition(self, job, from_status, to_status, reason):
        self._send_after_commit(
            signals.job_status_changed, job, old_status=from_status, new_status=to_status
        )
        if to_status == Status.COMPLETED:
            self._send_after_commit(signals.job_completed, job)
        elif to_status == Status.FAILED:
            self._send_after_commit(signals.job_failed, job, reason=reason)
        # Imported here because the pipeline imports this module.
        from sellmyimages.jobs.pipeline import schedule_next_step

        job_id = job.job_id
        transaction.on_commit(lambda: schedule_next_step(job_id, to_status))

    # Other changes

    def update_job(self, job_id, *, actor="system", reason="", **fields):
        """Set known fields on a job; unknown fields raise JobValidationError."""
        self._check_fields(fields, UPDATABLE_FIELDS)
        if "email" in fields:
            fields["email"] = self.validate_email(fields["email"])
        with transaction.atomic():
            job = self._locked(job_id)
            self._save_fields(job, fields)
            self._record(
                job, "job_updated", actor=actor, reason=reason, data={"fields": sorted(fields)}
            )
        return job

    def update_checkout_session(self, job_id, session_id, *, actor="system"):
        """Link the payment provider's checkout session to the job."""
        if not session_id:
            raise JobValidationError("session_id", "must not be empty.")
        with transaction.atomic():
            job = self._locked(job_id)
            if job.checkout_session_id == session_id:
                return job
            try:
                with transaction.atomic():
                    self._save_fields(job, {"checkout_session_id": session_id})
            except IntegrityError:
                raise JobValidationError(
                    "session_id", "is already linked to another job."
                ) from None
            self._record(job, "checkout_session_linked", actor=actor)
        return job

    def update_cost_data(self, job_id, *, actor="system", **costs):
        """Record money figures; each must be a Decimal, an int or a str."""
        self._check_fields(costs, COST_FIELDS)
        values = {}
        for name, value in costs.items():
            values[name] = None if value is None else self._decimal(name, value)
        with transaction.atomic():
            job = self._locked(job_id)
            self._save_fields(job, values)
            self._record(
                job,
                "cost_updated",
                actor=actor,
                data={name: None if v is None else str(v) for name, v in values.items()},
            )
        return job

    def generate_download_token(self, job_id, *, expires_in_hours=None, actor="system"):
        """Issue a new download token and return it; only its hash is kept.

        Issuing a token revokes the previous one.
        """
        if expires_in_hours is None:
            expires_in_hours = shopsettings.get().download_expiry_hours
        token = secrets.token_hex(TOKEN_BYTES)
        expires_at = timezone.now() + timedelta(hours=expires_in_hours)
        with transaction.atomic():
            job = self._locked(job_id)
            if job.status != Status.COMPLETED:
                raise InvalidTransition(
                    job.status, job.status, "a download token needs a completed job"
                )
            self._save_fields(
                job,
                {"download_token_hash": hash_token(token), "download_expires_at": expires_at},
            )
            self._record(
                job,
                "download_token_issued",
                actor=actor,
                data={"expires_at": expires_at.isoformat()},
            )
        return token

    def revoke_download_token(self, job_id, *, actor="system", reason=""):
        """Make the current download link stop working; return False if none."""
        with transaction.atomic():
            job = self._locked(job_id)
            if job.download_token_hash is None:
                return False
            self._save_fields(job, {"download_token_hash": None})
            self._record(job, "download_revoked", actor=actor, reason=reason)
        return True

    def find_by_download_token(self, token):
        """Return the job whose current token is `token`, or None."""
        if not isinstance(token, str) or len(token) != TOKEN_BYTES * 2:
            # Hash anyway so that malformed and unknown tokens take the same time.
            hash_token(str(token))
            return None
        return Job.objects.filter(download_token_hash=hash_token(token)).first()

    def record_download(self, job_id):
        """Count a download that starts at byte 0."""
        with transaction.atomic():
            job = self._locked(job_id)
            self._save_fields(
                job,
                {"download_count": job.download_count + 1, "last_downloaded_at": timezone.now()},
            )
            self._record(job, "downloaded", actor="customer")
        return job

    def record_event(self, job_id, event, *, actor="system", reason="", data=None):
        """Add an action to the audit trail without changing the job."""
        with transaction.atomic():
            job = self._locked(job_id)
            self._record(job, event, actor=actor, reason=reason, data=data)
        return job

    # Processing leases. A worker that runs a local upscale holds the job
    # under a lease it renews; the recovery sweep hands on a job whose lease
    # lapsed, which is how a job survives its worker being killed.

    def take_lease(self, job_id, *, attempt, owner, seconds, actor="worker"):
        """Let `owner` run `attempt` of a processing job; return False if it may not.

        The lease is granted when nobody holds it or the holder's lease has
        lapsed, so two live runs of one job cannot both hold it.
        """
        now = timezone.now()
        with transaction.atomic():
            job = self._locked(job_id)
            if job.status != Status.PROCESSING or job.attempt_count != attempt:
                return False
            lapsed = job.lease_expires_at is not None and job.lease_expires_at < now
            if job.lease_owner and not lapsed:
                return False
            previous_owner = job.lease_owner
            self._save_fields(
                job,
                {"lease_owner": owner, "lease_expires_at": now + timedelta(seconds=seconds)},
            )
            if previous_owner:
                self._record(
                    job,
                    "lease_taken_over",
                    actor=actor,
                    reason="the previous worker's lease lapsed",
                    data={"attempt": attempt},
                )
        return True

    def renew_lease(self, job_id, *, attempt, owner, seconds):
        """Extend `owner`'s lease; return False if it no longer holds the job.

        No JobEvent is written, because a renewal changes nothing a reader
        of the audit trail cares about, and it happens every few minutes.
        """
        updated = Job.objects.filter(
            job_id=self._parse_job_id(job_id),
            status=Status.PROCESSING,
            attempt_count=attempt,
            lease_owner=owner,
        ).update(lease_expires_at=timezone.now() + timedelta(seconds=seconds))
        return updated == 1

    def recover_lapsed_lease(self, job_id, *, seconds, actor="scheduler"):
        """Free a processing job whose lease lapsed; return its attempt, or None.

        The lease is cleared of its owner and set `seconds` ahead, which is
        how long the caller's re-enqueued task has to take it before the
        job counts as overdue again. A run that still thinks it holds the
        job then fails to renew or to complete it.
        """
        now = timezone.now()
        with transaction.atomic():
            job = self._locked(job_id)
            if (
                job.status != Status.PROCESSING
                or job.lease_expires_at is None
                or job.lease_expires_at >= now
            ):
                return None
            previous_owner = job.lease_owner
            self._save_fields(
                job,
                {"lease_owner": "", "lease_expires_at": now + timedelta(seconds=seconds)},
            )
            # Only a run that held the lease and stopped renewing it counts
            # as a lost worker; a task that never started is just requeued.
            if previous_owner:
                event, reason = "processing_recovered", "its worker stopped renewing the lease"
            else:
                event, reason = "step_requeued", "its processing task did not start in time"
            self._record(
                job, event, actor=actor, reason=reason, data={"attempt": job.attempt_count}
            )
        return job.attempt_count

    def set_next_poll_at(self, job_id, when, *, hold_until=None):
        """Schedule the next provider check of a processing job.

        With `hold_until`, no worker holds the job's lease and the recovery
        sweep leaves the job alone until then: the scheduled check holds it.
        Return False if the job is no longer processing. No JobEvent is
        written, because a poll is bookkeeping and each poll's outcome (a
        retry, a result, a failure) records its own event.
        """
        fields = {"next_poll_at": when, "updated_at": timezone.now()}
        if hold_until is not None:
            fields.update(lease_owner="", lease_expires_at=hold_until)
        updated = Job.objects.filter(
            job_id=self._parse_job_id(job_id), status=Status.PROCESSING
        ).update(**fields)
        return updated == 1

    # Queries for operators

    def filter_jobs(
        self,
        *,
        status=None,
        payment_status=None,
        provider=None,
        resolution=None,
        created_after=None,
        created_before=None,
        search=None,
        email=None,
    ):
        """Return a QuerySet of the jobs that match every given filter.

        These are the Jobs admin's filters; `search` matches part of any of
        SEARCH_FIELDS, as the admin's search box does.
        """
        jobs = Job.objects.all()
        for field, value, choices in (
            ("status", status, Status.values),
            ("payment_status", payment_status, PaymentStatus.values),
        ):
            if not value:
                continue
            values = [value] if isinstance(value, str) else list(value)
            for item in values:
                if item not in choices:
                    raise JobValidationError(
                        field, f"{item!r} is not one of {', '.join(choices)}."
                    )
            jobs = jobs.filter(**{f"{field}__in": values})
        if provider:
            jobs = jobs.filter(provider=provider)
        if email:
            jobs = jobs.filter(email__iexact=email)
        if resolution:
            jobs = jobs.filter(resolution=resolution)
        if created_after:
            created_after = self._aware(created_after, "created_after")
            jobs = jobs.filter(created_at__gte=created_after)
        if created_before:
            created_before = self._aware(created_before, "created_before")
            jobs = jobs.filter(created_at__lt=created_before)
        if search:
            match = Q()
            for field in SEARCH_FIELDS:
                match |= Q(**{f"{field}__icontains": search.strip()})
            jobs = jobs.filter(match)
        return jobs

    def stuck_since(self):
        """Return the time before which a pending or processing job counts as stuck."""
        return timezone.now() - timedelta(minutes=settings.SMI_STUCK_AFTER_MINUTES)

    def is_stuck(self, job):
        return (
            job.status in (Status.PENDING, Status.PROCESSING)
            and job.updated_at < self.stuck_since()
        )

    # Operator actions. The admin passes actor="admin:<username>" and the
    # CLI actor="cli:<os user>"; each action writes the audit trail.

    def retry(self, job_id, *, actor, reason=""):
        """Send a failed or stuck job through processing again.

        A failed job moves back to pending, which enqueues processing with
        a fresh count of attempts. It must be paid and not refunded, and
        its automatic refund must have ended as failed or canceled. A paid
        job that fails is refunded automatically, so retrying it while that
        refund can still go through could both deliver and refund it.

        A stuck job (pending or processing, unchanged for
        SMI_STUCK_AFTER_MINUTES) is re-run rather than failed first,
        because failing a paid job starts its refund. A stuck pending job
        has its processing task enqueued again; a stuck processing job is
        given a new attempt number and processed again, and a late task of
        the old attempt then does nothing.

        Returns "pending", "requeued" or "rerun", for those three cases.
        """
        with transaction.atomic():
            job = self._locked(job_id)
            if job.status == Status.FAILED:
                self._check_retryable_failure(job)
                self._transition(
                    job,
                    Status.PENDING,
                    actor=actor,
                    reason=reason or "retry",
                    fields={"attempt_count": 0},
                    event="retried",
                    data={
                        "failure_code": job.failure_code,
                        "attempts": job.attempt_count,
                    },
                )
                return "pending"
            if job.status not in (Status.PENDING, Status.PROCESSING):
                raise ActionNotAllowed(
                    "retry",
                    job,
                    f"it is {job.status!r}; only failed jobs and stuck pending or "
                    "processing jobs can be retried",
                )
            if not self.is_stuck(job):
                raise ActionNotAllowed(
                    "retry",
                    job,
                    f"it is {job.status!r} and changed at "
                    f"{job.updated_at:%Y-%m-%d %H:%M} UTC; it counts as stuck only "
                    f"after {settings.SMI_STUCK_AFTER_MINUTES} minutes without a change",
                )
            return self._rerun_stuck(job, actor=actor, reason=reason)

    def _check_retryable_failure(self, job):
        if job.payment_status in REFUNDED_PAYMENT_STATUSES:
            raise ActionNotAllowed("retry", job, "its payment was refunded")
        if job.payment_status != PaymentStatus.PAID:
            raise ActionNotAllowed(
                "retry",
                job,
                f"its payment status is {job.payment_status!r}; "
                "only a paid job is processed",
            )
        # Imported here because the payments app imports this module.
        from sellmyimages.payments.models import RefundStatus

        statuses = set(job.refunds.values_list("status", flat=True))
        if not statuses:
            raise ActionNotAllowed(
                "retry",
                job,
                "its automatic refund has not been attempted yet; retry it once "
                "that refund has failed",
            )
        open_statuses = statuses - {RefundStatus.FAILED, RefundStatus.CANCELED}
        if open_statuses:
            raise ActionNotAllowed(
                "retry",
                job,
                f"a refund of it is still {', '.join(sorted(open_statuses))}",
            )

    def _rerun_stuck(self, job, *, actor, reason):
        # Imported here because the tasks' modules import this module.
        from sellmyimages.jobs.pipeline import schedule_next_step
        from sellmyimages.upscaling.tasks import process_job

        job_id = job.job_id
        if job.status == Status.PENDING:
            self._save_fields(job, {})
            self._record(
                job, "retried", actor=actor, reason=reason or "stuck in pending"
            )
            transaction.on_commit(lambda: schedule_next_step(job_id, Status.PENDING))
            result = "requeued"
        else:
            attempt = job.attempt_count + 1
            self._save_fields(job, {"attempt_count": attempt})
            self._record(
                job,
                "retried",
                actor=actor,
                reason=reason or "stuck in processing",
                data={"attempt": attempt},
            )
            transaction.on_commit(
                lambda: process_job.enqueue(str(job_id), attempt=attempt)
            )
            result = "rerun"
        logger.info(
            "event=job_retried job_id=%s result=%s actor=%s", job_id, result, actor
        )
        return result

    def refund(self, job_id, amount=None, *, reason, actor):
        """Refund a paid job in full, or `amount` of it, and return the Refund.

        payments.service.refund_job writes the Refund row and the audit
        events and makes the first attempt at the provider. A full refund
        also makes the download link stop working.
        """
        reason = (reason or "").strip()
        if not reason:
            raise JobValidationError(
                "reason", "must not be empty; say why the job is refunded."
            )
        if len(reason) > REFUND_REASON_MAX_LENGTH:
            raise JobValidationError(
                "reason", f"is longer than {REFUND_REASON_MAX_LENGTH} characters."
            )
        if amount is not None:
            amount = self._decimal("amount", amount)
            if amount.as_tuple().exponent < -2:
                raise JobValidationError(
                    "amount", f"{amount} has more than two decimal places."
                )
        # Imported here because the payments app imports this module.
        from sellmyimages.payments.models import RefundKind
        from sellmyimages.payments.service import refund_job

        job = self.get_job(job_id)
        return refund_job(
            job.job_id, amount=amount, reason=reason, kind=RefundKind.ADMIN, actor=actor
        )

    def resend_download(self, job_id, *, actor):
        """Email the customer a new download link; the previous link stops working.

        The new link gets the full download expiry from now. Returns
        "sent" once the email is written.
        """
        # Imported here because the notifications app imports this module.
        from sellmyimages.notifications.tasks import send_download_email

        with transaction.atomic():
            job = self._locked(job_id)
            self._check_downloadable(job, "resend the download email of")
            if not job.email:
                raise ActionNotAllowed(
                    "resend the download email of", job, "it has no email address"
                )
            # A fresh key makes this a new message rather than a repeat of
            # the first download email, which was already sent.
            dedupe_key = f"resend-{uuid.uuid4().hex}"
            return send_download_email(job, dedupe_key=dedupe_key, actor=actor)

    def reissue_token(self, job_id, *, actor):
        """Issue a new download token without emailing it, and return the token.

        The previous link stops working. Only the token's SHA-256 is kept,
        so the caller must show the token now, to an operator who passes
        the link on to the customer.
        """
        with transaction.atomic():
            job = self._locked(job_id)
            self._check_downloadable(job, "issue a new download link for")
            return self.generate_download_token(job.job_id, actor=actor)

    def extend_expiry(self, job_id, hours, *, actor):
        """Make the download link work `hours` longer and return the new expiry.

        The hours are added to the current expiry, or to now if the link
        has already expired.
        """
        if isinstance(hours, bool) or not isinstance(hours, int):
            raise JobValidationError("hours", f"{hours!r} is not a whole number.")
        if not 1 <= hours <= MAX_EXTEND_HOURS:
            raise JobValidationError(
                "hours", f"{hours} is not between 1 and {MAX_EXTEND_HOURS}."
            )
        with transaction.atomic():
            job = self._locked(job_id)
            self._check_downloadable(job, "extend the download link of")
            if job.download_token_hash is None:
                raise ActionNotAllowed(
                    "extend the download link of",
                    job,
                    "it has no download link; resend the download email to issue one",
                )
            now = timezone.now()
            previous = job.download_expires_at
            expires_at = max(previous or now, now) + timedelta(hours=hours)
            self._save_fields(job, {"download_expires_at": expires_at})
            self._record(
                job,
                "download_expiry_extended",
                actor=actor,
                data={
                    "hours": hours,
                    "previous": previous.isoformat() if previous else None,
                    "expires_at": expires_at.isoformat(),
                },
            )
        return expires_at

    def mark_failed_by_operator(self, job_id, *, reason, actor):
        """Fail a job for the operator's `reason`; a paid job is then refunded.

        The reason is kept in failure_detail and on the audit trail, and the
        failure code is OPERATOR_FAILURE_CODE. Returns True.
        """
        reason = (reason or "").strip()
        if not reason:
            raise JobValidationError(
                "reason", "must not be empty; say why the job failed."
            )
        with transaction.atomic():
            job = self._locked(job_id)
            if job.status == Status.FAILED:
                raise ActionNotAllowed("fail", job, "it has already failed")
            problem = transition_error(job, Status.FAILED)
            if problem:
                raise ActionNotAllowed(
                    "fail", job, f"it is {job.status!r} and {problem}"
                )
            self._record(job, "failure_requested", actor=actor, reason=reason)
            return self.mark_failed(
                job.job_id, OPERATOR_FAILURE_CODE, detail=reason, actor=actor
            )

    def _check_downloadable(self, job, action):
        if job.status != Status.COMPLETED:
            raise ActionNotAllowed(action, job, f"it is {job.status!r}, not completed")
        if job.payment_status == PaymentStatus.REFUNDED:
            raise ActionNotAllowed(action, job, "its payment was refunded in full")
        if not job.output_path or not Path(job.output_path).is_file():
            raise ActionNotAllowed(action, job, "its upscaled file is no longer kept")

    # The customer's way back: a new link for an expired one, from the
    # order page.

    def new_link_available_until(self, job):
        """Return until when the customer may ask for a new link, or None if not now.

        That is while the job is completed and not refunded in full, has an
        email address, its link has expired, and its file is still kept:
        SMI_OUTPUT_RETENTION_HOURS after the expiry, and on disk.
        """
        now = timezone.now()
        if (
            job.status != Status.COMPLETED
            or job.payment_status == PaymentStatus.REFUNDED
            or not job.email
            or job.download_expires_at is None
            or job.download_expires_at > now
        ):
            return None
        retention = timedelta(hours=shopsettings.get().output_retention_hours)
        until = job.download_expires_at + retention
        if until <= now or not job.output_path or not Path(job.output_path).is_file():
            return None
        return until

    def new_link_requests_left(self, job):
        """Return how many more new links the customer may ask for in this 24 hours."""
        since = timezone.now() - timedelta(hours=24)
        requests = job.events.filter(event="new_link_requested", created_at__gte=since)
        used = requests.count()
        return max(settings.SMI_NEW_LINK_REQUESTS_PER_DAY - used, 0)

    def send_new_link(self, job_id):
        """Email a new download link to the job's own address for the customer.

        Raises ActionNotAllowed if the job does not qualify (see
        new_link_available_until) or if the daily limit of
        SMI_NEW_LINK_REQUESTS_PER_DAY requests is used up.
        """
        action = "send a new download link for"
        with transaction.atomic():
            # The row lock makes concurrent requests count one after another.
            job = self._locked(job_id)
            if self.new_link_available_until(job) is None:
                raise ActionNotAllowed(
                    action, job, "no new link can be sent for it now"
                )
            if self.new_link_requests_left(job) == 0:
                raise ActionNotAllowed(
                    action,
                    job,
                    f"the limit of {settings.SMI_NEW_LINK_REQUESTS_PER_DAY} "
                    "requests in 24 hours is reached",
                    code="rate_limited",
                )
            self._record(job, "new_link_requested", actor="customer")
            result = self.resend_download(job.job_id, actor="customer")
        logger.info("event=new_link_sent job_id=%s", job.job_id)
        return result

    # Validation helpers

    @staticmethod
    def validate_resolution(resolution):
        allowed = shopsettings.get().resolutions
        if resolution not in allowed:
            raise JobValidationError(
                "resolution", f"{resolution!r} is not one of {', '.join(allowed)}."
            )
        parse_factor(resolution)
        return resolution

    @staticmethod
    def validate_email(email):
        if email is None or email == "":
            return ""
        if not isinstance(email, str):
            raise JobValidationError("email", "must be a string.")
        email = email.strip()
        if len(email) > 254:
            raise JobValidationError("email", "is longer than 254 characters.")
        try:
            validate_email(email)
        except ValidationError:
            # The address itself stays out of the message, which may be logged.
            raise JobValidationError("email", "is not a valid email address.") from None
        return email

    # Internals

    @staticmethod
    def _parse_job_id(job_id):
        if isinstance(job_id, uuid.UUID):
            return job_id
        try:
            return uuid.UUID(str(job_id))
        except ValueError:
            raise JobNotFound(job_id) from None

    def _locked(self, job_id):
        try:
            return Job.objects.select_for_update().get(job_id=self._parse_job_id(job_id))
        except Job.DoesNotExist:
            raise JobNotFound(job_id) from None

    @staticmethod
    def _check_fields(fields, allowed):
        for name in fields:
            if name not in allowed:
                raise JobValidationError(
                    name, f"is not a field that can be set here; allowed: {', '.join(sorted(allowed))}."
                )

    @staticmethod
    def _decimal(name, value):
        if isinstance(value, float) or isinstance(value, bool):
            raise JobValidationError(name, f"{value!r} is a float; pass a Decimal or a string.")
        try:
            result = Decimal(value)
        except (InvalidOperation, TypeError, ValueError):
            raise JobValidationError(name, f"{value!r} is not a number.") from None
        if not result.is_finite() or result < 0:
            raise JobValidationError(name, f"{value!r} is not a finite number of zero or more.")
        return result

    @staticmethod
    def _aware(value, field):
        if timezone.is_naive(value):
            raise JobValidationError(field, "must be a timezone-aware datetime.")
        return value

    @staticmethod
    def _save_fields(job, fields):
        for name, value in fields.items():
            setattr(job, name, value)
        job.save(update_fields=[*fields, "updated_at"])

    @staticmethod
    def _record(job, event, *, actor, from_status="", to_status="", reason="", data=None):
        return JobEvent.objects.create(
            job=job,
            event=event,
            from_status=from_status or "",
            to_status=to_status or "",
            actor=actor,
            reason=reason or "",
            data=data or {},
        )

    @staticmethod
    def _send_after_commit(signal, job, **kwargs):
        job_pk = job.pk

        def send():
            fresh = Job.objects.get(pk=job_pk)
            for receiver, result in signal.send_robust(sender=Job, job=fresh, **kwargs):
                if isinstance(result, Exception):
                    logger.error(
                        "event=signal_receiver_failed job_id=%s receiver=%r error=%r",
                        fresh.job_id,
                        receiver,
                        result,
                        exc_info=result,
                    )

        transaction.on_commit(send)


job_manager = JobManager()
