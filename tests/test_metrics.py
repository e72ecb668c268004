"""/metrics: access rules, database gauges and counters from every process."""

import email
import email.policy
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from prometheus_client.parser import text_string_to_metric_families

from sellmyimages.observability import metrics
from tests.conftest import REPO, files_in, run_tasks
from tests.factories import make_job

LINK = re.compile(r"http://testserver/downloads/([0-9a-f]{64})")


def scrape(client=None, **headers):
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    return response.content.decode()


def sample(text, name, **labels):
    """Return the value of one sample in exposition text, or 0 if it is absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(
                found.labels.get(key) == value for key, value in labels.items()
            ):
                return found.value
    return 0.0


def buy_and_pay(client, catalog_name, email="metrics-buyer@example.com"):
    created = client.post(
        "/api/v1/jobs",
        {"catalog_image": catalog_name, "resolution": "4x"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    checkout = created.json()["checkout_url"].removeprefix("http://testserver")
    paid = client.post(checkout, {"action": "pay", "email": email})
    assert paid.status_code == 302
    return created.json()["job_id"]


def emailed_token(settings):
    for path in files_in(settings.SMI_OUTBOX_DIR):
        message = email.message_from_bytes(
            path.read_bytes(), policy=email.policy.default
        )
        found = LINK.search(message.get_body(preferencelist=("plain",)).get_content())
        if found:
            return found.group(1)
    raise AssertionError("No download link in the outbox.")


def test_metrics_use_multiprocess_mode():
    assert metrics.is_multiprocess()


@pytest.mark.django_db
def test_metrics_served_to_loopback():
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert (
        "no-cache" in response["Cache-Control"]
        or "max-age=0" in response["Cache-Control"]
    )
    assert "smi_jobs" in response.content.decode()


@pytest.mark.django_db
def test_metrics_refused_to_other_addresses(settings):
    settings.SMI_METRICS_TOKEN = ""
    response = Client().get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 403
    assert b"smi_jobs" not in response.content


@pytest.mark.django_db
def test_metrics_refused_through_proxy(settings):
    settings.SMI_METRICS_TOKEN = ""
    response = Client().get("/metrics", HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert response.status_code == 403


@pytest.mark.django_db
def test_metrics_loopback_can_be_turned_off(settings):
    settings.SMI_METRICS_ALLOW_LOOPBACK = False
    settings.SMI_METRICS_TOKEN = ""
    assert Client().get("/metrics").status_code == 403


@pytest.mark.django_db
def test_metrics_bearer_token(settings):
    settings.SMI_METRICS_TOKEN = "scrape-token-7f3a9c"
    remote = {"REMOTE_ADDR": "203.0.113.7"}
    missing = Client().get("/metrics", **remote)
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    wrong = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer nope", **remote)
    assert wrong.status_code == 401
    right = Client().get(
        "/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-7f3a9c", **remote
    )
    assert right.status_code == 200
    assert "smi_jobs" in right.content.decode()


@pytest.mark.django_db
def test_jobs_gauge_counts_each_status(catalog):
    name = catalog("photo_cat_chelsea_451x300.png")
    for _ in range(3):
        make_job(name)
    paid = make_job(name)
    from sellmyimages.jobs.manager import job_manager

    job_manager.mark_payment_completed(paid.job_id, "pi_metrics_gauge")

    text = scrape()
    assert sample(text, "smi_jobs", status="awaiting_payment") == 3
    assert sample(text, "smi_jobs", status="pending") == 1
    assert sample(text, "smi_jobs", status="completed") == 0
    assert sample(text, "smi_metrics_database_up") == 1


@pytest.mark.django_db
def test_queue_lag_is_age_of_oldest_ready_task(catalog):
    from sellmyimages.upscaling.tasks import process_job

    before = scrape()
    assert sample(before, "smi_tasks_ready") == 0
    assert sample(before, "smi_task_queue_lag_seconds") == 0

    job = make_job(catalog("photo_cat_chelsea_451x300.png"))
    old = process_job.enqueue(str(job.job_id))
    process_job.enqueue(str(job.job_id))
    DBTaskResult.objects.filter(id=old.id).update(
        enqueued_at=timezone.now() - timedelta(seconds=600)
    )
    # A task scheduled for later is not ready, so it adds no lag.
    process_job.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(
        str(job.job_id)
    )

    text = scrape()
    assert sample(text, "smi_tasks_ready") == 2
    lag = sample(text, "smi_task_queue_lag_seconds")
    assert 600 <= lag < 3600


@pytest.mark.django_db
def test_queue_gauges_need_database_backend(settings):
    settings.TASKS = {
        "default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}
    }
    text = scrape()
    assert "smi_task_queue_lag_seconds" not in text
    assert "smi_tasks_ready" not in text
    assert "smi_jobs{" in text


@pytest.mark.django_db(transaction=True)
def test_lifecycle_counts_transitions_and_download(client, catalog, settings):
    name = catalog("photo_cat_chelsea_451x300.png")
    before = scrape()

    buy_and_pay(client, name)
    run_tasks()
    response = client.get(f"/downloads/{emailed_token(settings)}")
    assert response.status_code == 200
    b"".join(response.streaming_content)

    after = scrape()

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("smi_jobs_created_total", resolution="4x") == 1
    transitions = "smi_job_transitions_total"
    assert delta(transitions, from_status="awaiting_payment", to_status="pending") == 1
    assert delta(transitions, from_status="pending", to_status="processing") == 1
    assert delta(transitions, from_status="processing", to_status="completed") == 1
    assert delta("smi_downloads_total", resolution="4x") == 1
    processed = delta(
        "smi_processing_duration_seconds_count", provider="local", outcome="completed"
    )
    assert processed == 1
    assert sample(after, "smi_jobs", status="completed") == 1


@pytest.mark.django_db(transaction=True)
def test_failure_counted_by_reason(client, catalog, settings):
    name = catalog("photo_cat_chelsea_451x300.png")
    before = scrape()
    buy_and_pay(client, name)
    # The original disappears before the worker runs: a permanent failure.
    (settings.SMI_CATALOG_DIR / name).unlink()
    run_tasks()
    after = scrape()

    failures = {
        found.labels["reason"]: found.value
        for family in text_string_to_metric_families(after)
        for found in family.samples
        if found.name == "smi_job_failures_total"
    }
    earlier = {
        found.labels["reason"]: found.value
        for family in text_string_to_metric_families(before)
        for found in family.samples
        if found.name == "smi_job_failures_total"
    }
    grown = {
        reason for reason, value in failures.items() if value > earlier.get(reason, 0)
    }
    assert len(grown) == 1
    assert sample(after, "smi_jobs", status="failed") == 1


@pytest.mark.django_db
def test_reporting_functions_show_in_metrics():
    before = scrape()
    metrics.observe_provider_call("fakeprovider", 2.5, "ok")
    metrics.observe_provider_call("fakeprovider", 30.0, "timeout")
    metrics.count_webhook("stripe", "invalid_signature")
    after = scrape()

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    duration = "smi_provider_call_duration_seconds"
    assert delta(f"{duration}_count", provider="fakeprovider", outcome="ok") == 1
    assert delta(f"{duration}_sum", provider="fakeprovider", outcome="ok") == 2.5
    assert delta(f"{duration}_count", provider="fakeprovider", outcome="error") == 1
    assert (
        delta("smi_provider_errors_total", provider="fakeprovider", code="timeout") == 1
    )
    assert (
        delta(
            "smi_webhooks_received_total", source="stripe", outcome="invalid_signature"
        )
        == 1
    )


def test_reporting_functions_never_raise():
    metrics.observe_provider_call("fakeprovider", "not a number", "ok")
    metrics.count_webhook(None, None)


@pytest.mark.django_db
def test_counters_of_other_processes_are_added():
    """A task worker's counts reach /metrics although it serves no HTTP."""
    before = scrape()
    code = (
        "import django; django.setup()\n"
        "from sellmyimages.observability import metrics\n"
        "for _ in range(3):\n"
        "    metrics.count_webhook('otherprocess', 'processed')\n"
    )
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environment, check=True, timeout=120
    )
    after = scrape()
    counter = "smi_webhooks_received_total"
    grown = sample(after, counter, source="otherprocess", outcome="processed") - sample(
        before, counter, source="otherprocess", outcome="processed"
    )
    assert grown == 3


def test_idle_process_leaves_no_value_file():
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    code = (
        "import django, os; django.setup()\n"
        "from sellmyimages.observability import metrics\n"
        "print(os.getpid())\n"
    )
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    pid = done.stdout.strip().splitlines()[-1]
    assert pid.isdigit()
    assert list(folder.glob(f"*_{pid}.db")) == []


def test_clear_metrics_dir_keeps_own_files(tmp_path):
    for name in ("counter_101.db", "histogram_101.db", "counter_202.db", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    deleted = metrics.clear_metrics_dir(keep_pid=202, folder=tmp_path)
    assert deleted == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_202.db", "notes.txt"]


@pytest.mark.django_db
def test_incoming_webhooks_counted_by_source(client, settings):
    """Rejected Stripe and provider callbacks show up under their source."""
    from sellmyimages.observability.metrics import WEBHOOKS_RECEIVED

    def value(source, outcome):
        sample = WEBHOOKS_RECEIVED.labels(source, outcome)
        return sample._value.get()

    settings.STRIPE_WEBHOOK_SECRET = "whsec_test"
    before_stripe = value("stripe", "rejected")
    before_provider = value("upsampler", "unknown_target")

    client.post("/webhooks/stripe", b"{}", content_type="application/json")
    client.post("/webhooks/upsampler/" + "x" * 40, b"{}", content_type="application/json")

    assert value("stripe", "rejected") == before_stripe + 1
    assert value("upsampler", "unknown_target") == before_provider + 1


def test_provider_call_errors_counted():
    """A provider that cannot be reached shows up as an error of its code."""
    import socket

    from sellmyimages.observability.metrics import PROVIDER_ERRORS
    from sellmyimages.upscaling.backends.base import ProviderError
    from sellmyimages.upscaling.backends.http import ProviderClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    sample = PROVIDER_ERRORS.labels("upsampler", "provider_unreachable")
    before = sample._value.get()
    client = ProviderClient("upsampler", f"http://127.0.0.1:{closed_port}", "key")
    try:
        with pytest.raises(ProviderError):
            client.request("GET", "/status/1")
    finally:
        client.close()
    assert sample._value.get() == before + 1
