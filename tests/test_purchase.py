"""A whole purchase on the embedded default: API, checkout page, worker, email, download."""

import email
import email.policy
import re
from pathlib import Path

import pytest
from django.test import Client
from PIL import Image

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, JobEvent
from sellmyimages.notifications.models import Notification
from tests.conftest import files_in, run_tasks

pytestmark = pytest.mark.django_db(transaction=True)

LINK = re.compile(r"http://testserver/downloads/([0-9a-f]{64})")


def outbox_messages(settings):
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in files_in(settings.SMI_OUTBOX_DIR)
    ]


def buy(client, catalog_image, resolution="4x", buyer="buyer@example.com"):
    response = client.post(
        "/api/v1/jobs",
        {"catalog_image": catalog_image, "resolution": resolution},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    checkout = created["checkout_url"].removeprefix("http://testserver")
    page = client.get(checkout)
    assert page.status_code == 200
    assert b"test checkout" in page.content.lower()
    paid = client.post(checkout, {"action": "pay", "email": buyer})
    assert paid.status_code == 302
    return created


def test_purchase_delivers_exact_4x_download(client, catalog, settings):
    name = catalog("photo_cat_chelsea_451x300.png")
    created = buy(client, name)

    run_tasks()

    job = Job.objects.get(job_id=created["job_id"])
    assert job.status == "completed"
    assert job.payment_status == "paid"
    assert (job.output_width, job.output_height) == (1804, 1200)
    events = [(e.from_status, e.to_status) for e in job.events.exclude(to_status="")]
    assert events == [
        ("", "awaiting_payment"),
        ("awaiting_payment", "pending"),
        ("pending", "processing"),
        ("processing", "completed"),
    ]

    messages = outbox_messages(settings)
    assert len(messages) == 1
    message = messages[0]
    assert message["To"] == "buyer@example.com"
    assert message.get_body(preferencelist=("html",)) is not None
    token = LINK.search(message.get_body(preferencelist=("plain",)).get_content()).group(1)

    response = client.get(f"/downloads/{token}")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert 'filename="photo_cat_chelsea_451x300-4x.png"' in response["Content-Disposition"]
    body = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(body)
    target = Path(settings.DATA_DIR) / "got.png"
    target.write_bytes(body)
    with Image.open(target) as image:
        assert image.size == (1804, 1200)
    assert Job.objects.get(pk=job.pk).download_count == 1

    status = client.get(f"/api/v1/jobs/{job.job_id}").json()
    assert status["status"] == "completed"
    assert status["download_ready"] is True
    assert "email" not in status
    assert "buyer@example.com" not in str(status)


def test_running_tasks_twice_sends_one_email(client, catalog, settings):
    created = buy(client, catalog("photo_cat_chelsea_451x300.png"))
    run_tasks()
    job = Job.objects.get(job_id=created["job_id"])

    # Re-enqueue every step, as a recovery sweep or a duplicate event would.
    from sellmyimages.jobs.pipeline import schedule_next_step

    for status in ("pending", "completed"):
        schedule_next_step(job.job_id, status)
    run_tasks()

    assert len(outbox_messages(settings)) == 1
    assert Notification.objects.filter(job=job, sent_at__isnull=False).count() == 1
    assert JobEvent.objects.filter(job=job, to_status="completed").count() == 1


def test_exif_rotated_photo_priced_and_delivered_upright(client, catalog, settings):
    name = catalog("phone_photo_dog_4032x3024_exif_orientation6.jpg")
    quote = client.post(
        "/api/v1/quotes", {"catalog_image": name}, content_type="application/json"
    ).json()
    assert (quote["source_width"], quote["source_height"]) == (3024, 4032)


def test_cancel_leaves_job_awaiting_payment(client, catalog):
    name = catalog("photo_cat_chelsea_451x300.png")
    created = client.post(
        "/api/v1/jobs",
        {"catalog_image": name, "resolution": "4x"},
        content_type="application/json",
    ).json()
    checkout = created["checkout_url"].removeprefix("http://testserver")
    response = client.post(checkout, {"action": "cancel"})
    assert response.status_code == 302
    assert Job.objects.get(job_id=created["job_id"]).status == "awaiting_payment"


def test_local_checkout_refused_outside_test_mode(client, catalog, settings):
    name = catalog("photo_cat_chelsea_451x300.png")
    created = client.post(
        "/api/v1/jobs",
        {"catalog_image": name, "resolution": "4x"},
        content_type="application/json",
    ).json()
    settings.SMI_TEST_MODE = False
    checkout = created["checkout_url"].removeprefix("http://testserver")
    assert client.get(checkout).status_code == 404
    assert client.post(checkout, {"action": "pay", "email": "a@example.com"}).status_code == 404
    assert Job.objects.get(job_id=created["job_id"]).payment_status == "unpaid"


def test_failed_upscale_is_refunded_and_admin_told(client, catalog, settings):
    name = catalog("photo_cat_chelsea_451x300.png")
    created = buy(client, name)
    # The original disappears before the worker runs: a permanent failure.
    (Path(settings.SMI_CATALOG_DIR) / name).unlink()

    run_tasks()

    job = Job.objects.get(job_id=created["job_id"])
    assert job.status == "failed"
    assert job.failure_code == "source_missing"
    assert job.payment_status == "refunded"
    assert job.refund_amount == job.customer_price
    recipients = sorted(m["To"] for m in outbox_messages(settings))
    assert recipients == sorted([settings.SMI_ADMIN_EMAIL, "buyer@example.com"])
    assert job_manager.get_job(job.job_id).refunds.count() == 1


def test_refund_task_skips_retried_job(client, catalog, settings):
    """A refund queued for a failure does nothing once an admin retried the job."""
    from sellmyimages.payments.tasks import refund_failed_job

    name = catalog("photo_cat_chelsea_451x300.png")
    created = buy(client, name)
    job = Job.objects.get(job_id=created["job_id"])
    job_manager.update_status(job.job_id, "failed", actor="test", failure_code="test")
    job_manager.update_status(job.job_id, "pending", actor="admin:test")

    assert refund_failed_job.call(str(job.job_id)) == "not_failed"
    job = Job.objects.get(pk=job.pk)
    assert job.payment_status == "paid"
    assert job.refunds.count() == 0


def test_refund_before_delivery_stops_the_job(client, catalog, settings):
    """A full refund while the job waits for a worker means no image is sent."""
    from sellmyimages.payments.service import refund_job

    created = buy(client, catalog("photo_cat_chelsea_451x300.png"))
    refund_job(created["job_id"], reason="customer asked", kind="admin", actor="admin:test")

    run_tasks()

    job = Job.objects.get(job_id=created["job_id"])
    assert job.status == "failed"
    assert job.failure_code == "payment_refunded"
    assert job.payment_status == "refunded"
    assert job.output_path == ""
    assert job.download_token_hash is None
    subjects = [m["Subject"] for m in outbox_messages(settings) if m["To"] == "buyer@example.com"]
    assert len(subjects) == 1
    assert "refunded" in subjects[0]
