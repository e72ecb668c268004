"""Prometheus metrics: in-process counters plus gauges read from the database.

The shop runs as several processes (gunicorn workers and task workers),
and only the web processes serve /metrics. Counters therefore use
prometheus-client's multiprocess mode: every process writes its values to
memory-mapped files in SMI_METRICS_DIR (the PROMETHEUS_MULTIPROC_DIR of
prometheus-client) and a scrape adds up the files of all processes. Gauges
that describe the whole shop (jobs by status, queue lag) are computed from
the database at scrape time, so they are right whichever process answers.

prometheus-client picks multiprocess mode when it is first imported, if
PROMETHEUS_MULTIPROC_DIR is set then; this module sets it from settings
before importing it.

Other code records what it sees through the small functions below, e.g.
observe_provider_call("upsampler", 4.2, "ok") or count_webhook("stripe",
"processed"). They never raise.

Every metric has labels, because prometheus-client creates the value file
of a metric without labels as soon as the metric is defined. With labels,
a process that counts nothing, such as one `smi jobs list`, leaves no file.
"""

import functools
import logging
import os
from pathlib import Path

from django.conf import settings

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.SMI_METRICS_DIR))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

import prometheus_client  # noqa: E402
from prometheus_client import multiprocess, values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

logger = logging.getLogger(__name__)

# Upscaling takes seconds to minutes, so the buckets reach 30 minutes.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# Metrics of this process. In multiprocess mode their values live in the
# shared files, and this registry only keeps the objects apart from
# prometheus-client's global one.
PROCESS_REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

JOBS_CREATED = prometheus_client.Counter(
    "smi_jobs_created",
    "Jobs created, by resolution.",
    ["resolution"],
    registry=PROCESS_REGISTRY,
)
TRANSITIONS = prometheus_client.Counter(
    "smi_job_transitions",
    "Job status changes.",
    ["from_status", "to_status"],
    registry=PROCESS_REGISTRY,
)
JOB_FAILURES = prometheus_client.Counter(
    "smi_job_failures",
    "Jobs that moved to failed, by failure code.",
    ["reason"],
    registry=PROCESS_REGISTRY,
)
PROCESSING_DURATION = prometheus_client.Histogram(
    "smi_processing_duration_seconds",
    "Time from the start of processing to completed or failed, by provider.",
    ["provider", "outcome"],
    buckets=DURATION_BUCKETS,
    registry=PROCESS_REGISTRY,
)
PROVIDER_CALL_DURATION = prometheus_client.Histogram(
    "smi_provider_call_duration_seconds",
    "Duration of calls to an upscaling provider, by outcome (ok or error).",
    ["provider", "outcome"],
    buckets=DURATION_BUCKETS,
    registry=PROCESS_REGISTRY,
)
PROVIDER_ERRORS = prometheus_client.Counter(
    "smi_provider_errors",
    "Failed calls to an upscaling provider, by error code.",
    ["provider", "code"],
    registry=PROCESS_REGISTRY,
)
WEBHOOKS_RECEIVED = prometheus_client.Counter(
    "smi_webhooks_received",
    "Incoming provider webhooks, by source and outcome.",
    ["source", "outcome"],
    registry=PROCESS_REGISTRY,
)
WEBHOOKS_SENT = prometheus_client.Counter(
    "smi_webhooks_sent",
    "Outgoing webhook delivery attempts, by event type and outcome.",
    ["event", "outcome"],
    registry=PROCESS_REGISTRY,
)
DOWNLOADS = prometheus_client.Counter(
    "smi_downloads",
    "Downloads of finished images that started at byte 0, by resolution.",
    ["resolution"],
    registry=PROCESS_REGISTRY,
)


def is_multiprocess():
    """Return True if prometheus-client stores values in the shared files."""
    return getattr(values.ValueClass, "_multiprocess", False)


def observe_provider_call(provider, seconds, outcome="ok"):
    """Record one call to an upscaling provider.

    `outcome` is "ok" or a short error code such as "timeout"; any other
    value than "ok" also counts as an error of that code.
    """
    try:
        result = "ok" if outcome == "ok" else "error"
        PROVIDER_CALL_DURATION.labels(provider, result).observe(
            max(0.0, float(seconds))
        )
        if result == "error":
            PROVIDER_ERRORS.labels(provider, outcome).inc()
    except Exception:  # a metric must never break the code that reports it
        logger.exception(
            "event=metric_failed metric=provider_call provider=%s", provider
        )


def count_webhook(source, outcome):
    """Count one incoming webhook, e.g. count_webhook("stripe", "processed")."""
    try:
        WEBHOOKS_RECEIVED.labels(source, outcome).inc()
    except Exception:
        logger.exception(
            "event=metric_failed metric=webhook_received source=%s", source
        )


# Incoming webhook outcomes, named by the HTTP status the endpoint answered.
WEBHOOK_OUTCOMES = {
    200: "accepted",
    202: "accepted",
    400: "rejected",
    404: "unknown_target",
    405: "rejected",
    413: "too_large",
    500: "failed",
    503: "unavailable",
}


def counts_webhooks(source):
    """Decorate a webhook view so each request is counted by its outcome.

    `source` is a name such as "stripe", or a callable that takes the view's
    keyword arguments and returns one (the provider in the URL).
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            response = view(request, *args, **kwargs)
            name = source(**kwargs) if callable(source) else source
            outcome = WEBHOOK_OUTCOMES.get(
                response.status_code, f"http_{response.status_code}"
            )
            count_webhook(name, outcome)
            return response

        return wrapper

    return decorate


def count_webhook_sent(event, outcome):
    """Count one outgoing webhook attempt, e.g. ("job_completed", "delivered")."""
    try:
        WEBHOOKS_SENT.labels(event, outcome).inc()
    except Exception:
        logger.exception(
            "event=metric_failed metric=webhook_sent webhook_event=%s", event
        )


def count_download(resolution):
    try:
        DOWNLOADS.labels(resolution).inc()
    except Exception:
        logger.exception("event=metric_failed metric=download")


class DatabaseCollector:
    """Gauges computed from the database each time /metrics is scraped."""

    def collect(self):
        # Imported here: this module is imported while apps are loading.
        from django.db import DatabaseError

        from sellmyimages.observability import gauges

        database_up = GaugeMetricFamily(
            "smi_metrics_database_up",
            "1 if the database answered the queries of this scrape, else 0.",
        )
        try:
            families = list(gauges.collect_database_gauges())
        except DatabaseError as exc:
            logger.warning("event=metrics_database_failed error=%s", type(exc).__name__)
            database_up.add_metric([], 0)
            yield database_up
            return
        database_up.add_metric([], 1)
        yield database_up
        yield from families


_scrape_registry = None


def scrape_registry():
    """Return the registry /metrics exposes: every process's counters plus gauges."""
    global _scrape_registry
    if _scrape_registry is None:
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        if is_multiprocess():
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_ProcessCollector())
        registry.register(DatabaseCollector())
        _scrape_registry = registry
    return _scrape_registry


class _ProcessCollector:
    # Without multiprocess mode only this process's own values can be shown.
    def collect(self):
        return PROCESS_REGISTRY.collect()


def render():
    """Return the exposition text and its content type."""
    return (
        prometheus_client.generate_latest(scrape_registry()),
        prometheus_client.CONTENT_TYPE_LATEST,
    )


def clear_metrics_dir(keep_pid=None, folder=None):
    """Delete the value files that earlier processes left in SMI_METRICS_DIR.

    Call it only when no other process of the shop is running, because the
    files of running processes go too (except those of `keep_pid`).
    Returns the number of files deleted.
    """
    folder = Path(folder or os.environ["PROMETHEUS_MULTIPROC_DIR"])
    deleted = 0
    for path in folder.glob("*.db"):
        if keep_pid is not None and path.stem.endswith(f"_{keep_pid}"):
            continue
        path.unlink(missing_ok=True)
        deleted += 1
    return deleted
