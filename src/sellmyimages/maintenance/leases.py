"""A worker's renewable hold on a processing job.

A local upscale runs inside the worker process, so the job row cannot tell
whether its worker is still alive. The worker therefore takes a lease when
it starts (Job.lease_owner and Job.lease_expires_at) and a background
thread renews it every third of SMI_PROCESSING_LEASE_SECONDS. If the
worker is killed the renewals stop, the lease lapses, and the recovery
sweep enqueues the step again. A run that lost its lease is not allowed to
complete the job.
"""

import logging
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, Status

logger = logging.getLogger(__name__)


def new_owner():
    """Return an id for one run of a task, unique across machines."""
    return uuid.uuid4().hex


def lease_seconds():
    return settings.SMI_PROCESSING_LEASE_SECONDS


def lease_fields(owner):
    """Return the Job fields that give `owner` a fresh lease."""
    return {
        "lease_owner": owner,
        "lease_expires_at": timezone.now() + timedelta(seconds=lease_seconds()),
    }


def holds_lease(job_id, attempt, owner):
    """Lock the job row and return True if `owner` still holds `attempt`.

    Call it inside transaction.atomic(), and make the change that needs
    the lease in the same transaction, so a recovery cannot slip between.
    """
    job = Job.objects.select_for_update().filter(job_id=job_id).first()
    return (
        job is not None
        and job.status == Status.PROCESSING
        and job.attempt_count == attempt
        and job.lease_owner == owner
    )


@contextmanager
def keep_lease(job_id, attempt, owner):
    """Renew `owner`'s lease on the job in a background thread until exit."""
    stop = threading.Event()
    interval = max(lease_seconds() / 3, 0.1)

    def renew():
        try:
            while not stop.wait(interval):
                try:
                    held = job_manager.renew_lease(
                        job_id, attempt=attempt, owner=owner, seconds=lease_seconds()
                    )
                except DatabaseError as exc:
                    # The lease may lapse while the database is away; the
                    # run then finds out when it tries to complete.
                    logger.warning(
                        "event=lease_renewal_failed job_id=%s error=%s", job_id, exc
                    )
                    connection.close()
                    continue
                if not held:
                    logger.warning("event=lease_lost job_id=%s attempt=%d", job_id, attempt)
                    return
        finally:
            connection.close()

    thread = threading.Thread(target=renew, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

