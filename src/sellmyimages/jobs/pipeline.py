"""What happens after each status change: the next task to enqueue.

The job row is the source of truth; a task only says "look at this job
now". Every task re-reads the job and does nothing if the step it was
meant for has already happened, so enqueueing a step twice is harmless.
The recovery sweep calls schedule_next_step again for jobs whose step is
overdue.
"""

import logging

from sellmyimages.jobs.models import Job, PaymentStatus, Status

logger = logging.getLogger(__name__)


def schedule_next_step(job_id, status):
    """Enqueue the task that moves a job on from `status`.

    The change that led here is already committed, so a queue that cannot
    be reached must not fail the caller: the error is logged and the
    recovery sweep enqueues the step once it is overdue.
    """
    try:
        enqueue_next_step(job_id, status)
    except Exception as exc:  # any backend's connection error
        logger.error(
            "event=enqueue_failed job_id=%s status=%s error=%r", job_id, status, exc
        )


def enqueue_next_step(job_id, status):
    # Imported here so that the tasks' modules can import the manager.
    from sellmyimages.notifications import tasks as notification_tasks
    from sellmyimages.payments import tasks as payment_tasks
    from sellmyimages.upscaling import tasks as upscaling_tasks

    job_id = str(job_id)
    if status == Status.PENDING:
        upscaling_tasks.process_job.enqueue(job_id)
    elif status == Status.COMPLETED:
        notification_tasks.deliver_download.enqueue(job_id)
    elif status == Status.FAILED:
        notification_tasks.notify_admin_of_failure.enqueue(job_id)
        payment_status = (
            Job.objects.filter(job_id=job_id).values_list("payment_status", flat=True).first()
        )
        if payment_status == PaymentStatus.PAID:
            payment_tasks.refund_failed_job.enqueue(job_id)
    logger.debug("event=next_step_scheduled job_id=%s status=%s", job_id, status)
