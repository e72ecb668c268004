"""The background task that sends one attempt of a webhook delivery."""

from django.tasks import task

from sellmyimages.hooks import sending
from sellmyimages.hooks.models import WebhookDelivery
from sellmyimages.logformat import bind_job_id


@task()
def deliver_webhook(delivery_id, attempt=1):
    """POST one attempt of a delivery; a failure schedules the next attempt."""
    job_id = (
        WebhookDelivery.objects.filter(pk=delivery_id)
        .values_list("job_id", flat=True)
        .first()
    )
    with bind_job_id(job_id):
        return sending.send_attempt(delivery_id, attempt)
