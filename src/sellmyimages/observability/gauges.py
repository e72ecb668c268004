"""Gauges that /metrics computes from the database at scrape time."""

from django.conf import settings
from django.db.models import Case, Count, DateTimeField, F, Min, When
from django.db.models.functions import Greatest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult, get_date_max
from prometheus_client.core import GaugeMetricFamily

from sellmyimages.hooks.models import DeliveryStatus, WebhookDelivery
from sellmyimages.jobs.models import Job, Status

DATABASE_TASK_BACKEND = "django_tasks_db.DatabaseBackend"


def collect_database_gauges():
    """Yield every database gauge; raise DatabaseError if a query fails.

    The task gauges need the database task backend. With another backend
    (Celery) the tasks are not in the database, so they are left out
    rather than shown as an empty queue.
    """
    yield jobs_by_status()
    if settings.TASKS["default"]["BACKEND"] == DATABASE_TASK_BACKEND:
        yield from task_queue()
    yield webhook_deliveries_by_status()


def jobs_by_status():
    family = GaugeMetricFamily("smi_jobs", "Jobs in each status.", labels=["status"])
    counts = dict(
        Job.objects.order_by().values_list("status").annotate(count=Count("id"))
    )
    for status in Status.values:
        family.add_metric([status], counts.get(status, 0))
    return family


def task_queue():
    """Yield the number of ready tasks and the age of the oldest one.

    A task becomes ready when it is enqueued, or at its run_after time if
    it was scheduled for later. Its lag is the time since then.
    """
    ready = DBTaskResult.objects.ready()
    became_ready = Greatest(
        F("enqueued_at"),
        Case(
            When(run_after=get_date_max(), then=F("enqueued_at")),
            default=F("run_after"),
            output_field=DateTimeField(),
        ),
    )
    summary = ready.aggregate(count=Count("id"), oldest=Min(became_ready))
    count = GaugeMetricFamily("smi_tasks_ready", "Background tasks ready to run.")
    count.add_metric([], summary["count"])
    lag = GaugeMetricFamily(
        "smi_task_queue_lag_seconds",
        "Seconds the oldest ready background task has waited; 0 when none waits.",
    )
    oldest = summary["oldest"]
    seconds = 0.0
    if oldest is not None:
        seconds = max(0.0, (timezone.now() - oldest).total_seconds())
    lag.add_metric([], seconds)
    yield count
    yield lag


def webhook_deliveries_by_status():
    family = GaugeMetricFamily(
        "smi_webhook_deliveries",
        "Outgoing webhook deliveries in each status.",
        labels=["status"],
    )
    counts = dict(
        WebhookDelivery.objects.order_by()
        .values_list("status")
        .annotate(count=Count("id"))
    )
    for status in DeliveryStatus.values:
        family.add_metric([status], counts.get(status, 0))
    return family
