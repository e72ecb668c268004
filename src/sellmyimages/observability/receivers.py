"""Signal receivers that feed the metrics and the log context.

The job signals arrive after their transaction commits, in the process
that made the change, so each counter counts committed changes only.
"""

import inspect
import logging

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.tasks.signals import task_finished, task_started

from sellmyimages.jobs import signals
from sellmyimages.jobs.models import Job, JobEvent, Status
from sellmyimages.logformat import current_job_id
from sellmyimages.observability import metrics

logger = logging.getLogger(__name__)


@receiver(signals.job_created, sender=Job, dispatch_uid="metrics_job_created")
def count_job_created(sender, job, **kwargs):
    metrics.JOBS_CREATED.labels(job.resolution).inc()


@receiver(signals.job_status_changed, sender=Job, dispatch_uid="metrics_transition")
def count_transition(sender, job, old_status, new_status, **kwargs):
    metrics.TRANSITIONS.labels(old_status, new_status).inc()
    if old_status == Status.PROCESSING and job.processing_started_at is not None:
        ended_at = job.completed_at if new_status == Status.COMPLETED else job.failed_at
        if ended_at is not None:
            seconds = max(0.0, (ended_at - job.processing_started_at).total_seconds())
            metrics.PROCESSING_DURATION.labels(
                job.provider or "unknown", new_status
            ).observe(seconds)


@receiver(signals.job_failed, sender=Job, dispatch_uid="metrics_job_failed")
def count_failure(sender, job, reason="", **kwargs):
    metrics.JOB_FAILURES.labels(reason or job.failure_code or "unknown").inc()


@receiver(post_save, sender=JobEvent, dispatch_uid="metrics_download")
def count_download(sender, instance, created, **kwargs):
    # post_save runs inside the manager's transaction, and a receiver that
    # raised would roll the download back, so this one only schedules.
    if created and instance.event == "downloaded":
        resolution = instance.job.resolution
        transaction.on_commit(lambda: metrics.count_download(resolution))


def job_id_argument(task_result):
    """Return the job_id argument of a task whose first parameter is job_id."""
    try:
        parameters = list(inspect.signature(task_result.task.func).parameters)
    except (TypeError, ValueError):
        return None
    if task_result.task.takes_context:
        parameters = parameters[1:]
    if not parameters or parameters[0] != "job_id":
        return None
    if task_result.args:
        return task_result.args[0]
    return task_result.kwargs.get("job_id")


@receiver(task_started, dispatch_uid="log_context_task_started")
def bind_task_job_id(sender, task_result, **kwargs):
    job_id = job_id_argument(task_result)
    current_job_id.set(str(job_id) if job_id else None)


@receiver(task_finished, dispatch_uid="log_context_task_finished")
def unbind_task_job_id(sender, task_result, **kwargs):
    current_job_id.set(None)
