"""Turn the four job signals into outgoing webhook deliveries.

The signals are sent after the job's transaction commits, so a delivery
is created only for a change that happened. A process that stops between
that commit and this receiver loses the event's deliveries.
"""

from django.dispatch import receiver

from sellmyimages.hooks.models import WebhookEvent
from sellmyimages.hooks.sending import create_deliveries
from sellmyimages.jobs import signals
from sellmyimages.jobs.models import Job


@receiver(signals.job_created, sender=Job, dispatch_uid="hooks_job_created")
def on_job_created(sender, job, **kwargs):
    create_deliveries(WebhookEvent.JOB_CREATED, job)


@receiver(signals.payment_completed, sender=Job, dispatch_uid="hooks_payment_completed")
def on_payment_completed(sender, job, **kwargs):
    create_deliveries(WebhookEvent.PAYMENT_COMPLETED, job)


@receiver(signals.job_completed, sender=Job, dispatch_uid="hooks_job_completed")
def on_job_completed(sender, job, **kwargs):
    create_deliveries(WebhookEvent.JOB_COMPLETED, job)


@receiver(signals.job_failed, sender=Job, dispatch_uid="hooks_job_failed")
def on_job_failed(sender, job, **kwargs):
    create_deliveries(WebhookEvent.JOB_FAILED, job)
