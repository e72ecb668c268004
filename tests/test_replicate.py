"""Replicate predictions against the loopback fake: signed webhooks, polling,
reconciling a submission that may have started, and the faults."""

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
from django.core.exceptions import ImproperlyConfigured

from sellmyimages.payments.models import Refund
from sellmyimages.upscaling.backends import check_configuration
from sellmyimages.upscaling.backends.base import CallbackRejected
from sellmyimages.upscaling.backends.replicate import sign_webhook, verify_webhook
from sellmyimages.upscaling.models import ProviderSubmission
from tests.conftest import run_tasks
from tests.factories import force_status, make_job
from tests.fakes.loopback import DjangoApp, drive
from tests.fakes.replicate import FakeReplicate, replicate  # noqa: F401

CAT = "photo_cat_chelsea_451x300.png"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def paid_job(catalog, name=CAT, resolution="4x"):
    job = make_job(catalog(name), resolution=resolution)
    return force_status(job, "pending")


def event_reasons(job, name):
    return list(job.events.filter(event=name).values_list("reason", flat=True))


@pytest.fixture
def polling(settings):
    settings.SMI_PROVIDER_POLL_INITIAL_SECONDS = 0.2
    settings.SMI_PROVIDER_POLL_MAX_SECONDS = 0.4


# Flows through the fake


@pytest.mark.django_db(transaction=True)
def test_prediction_completes_through_signed_webhook(replicate, catalog, client):
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "completed", job.failure_detail
    assert job.provider == "replicate"
    assert job.provider_job_id in replicate.jobs
    assert (job.output_width, job.output_height) == (1804, 1200)
    assert replicate.callback_statuses == [202]
    assert (
        replicate.count("POST", r"/v1/models/nightmareai/real-esrgan/predictions") == 1
    )
    # The webhook was confirmed by reading the prediction back.
    assert replicate.count("GET", r"/v1/predictions/.+") >= 1
    result = job.events.get(event="provider_result")
    assert result.data["predict_time"] == 1.25
    assert job.credits_charged is None
    assert job.next_poll_at is None


@pytest.mark.django_db(transaction=True)
def test_request_matches_replicate_format(replicate, catalog, client):
    job = drive(paid_job(catalog), replicate, client=client)

    body = replicate.jobs[job.provider_job_id].body
    assert body["input"]["scale"] == 4
    assert body["input"]["face_enhance"] is False
    assert body["input"]["image"].startswith("http://testserver/webhooks/source/")
    assert body["webhook"].startswith("http://testserver/webhooks/replicate/")
    assert body["webhook_events_filter"] == ["completed"]
    assert "version" not in body


@pytest.mark.django_db(transaction=True)
def test_pinned_version_uses_predictions_endpoint(replicate, catalog, client, settings):
    settings.REPLICATE_VERSION = "42a8c3b1"
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "completed"
    assert replicate.count("POST", r"/v1/predictions") == 1
    assert replicate.jobs[job.provider_job_id].body["version"] == "42a8c3b1"


@pytest.mark.django_db(transaction=True)
def test_badly_signed_webhook_rejected(replicate, catalog, client, polling):
    replicate.inject("bad_signature")
    job = drive(paid_job(catalog), replicate, client=client)

    assert replicate.callback_statuses == [400]
    assert event_reasons(job, "provider_callback_rejected") == [
        "No v1 signature in webhook-signature matches the body."
    ]
    assert "provider_callback" not in job.events.values_list("event", flat=True)
    # Polling still completes the job.
    assert job.status == "completed"


@pytest.mark.django_db(transaction=True)
def test_missing_webhook_completed_by_polling(replicate, catalog, client, polling):
    replicate.inject("no_callback")
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "completed"
    assert replicate.callback_statuses == []


@pytest.mark.django_db(transaction=True)
def test_list_output_accepted(replicate, catalog, client):
    replicate.inject("list_output")
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "completed"


@pytest.mark.django_db(transaction=True)
def test_timed_out_create_reconciled_not_resent(replicate, catalog, client):
    replicate.inject("submit_timeout", seconds=1.5)
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "completed"
    assert event_reasons(job, "provider_submit_failed") == ["provider_timeout"]
    assert "provider_submission_adopted" in job.events.values_list("event", flat=True)
    # The prediction the timed-out request started was found and used.
    assert len(replicate.jobs) == 1
    adopted = ProviderSubmission.objects.get(job=job, attempt=1)
    assert adopted.state == "succeeded"
    assert adopted.provider_job_id == job.provider_job_id


@pytest.mark.django_db(transaction=True)
def test_lost_create_sent_again_after_reconciling(replicate, catalog, client):
    replicate.inject("submit_drop", seconds=1.5)
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "completed"
    assert "provider_submission_not_started" in job.events.values_list(
        "event", flat=True
    )
    assert len(replicate.jobs) == 1
    states = dict(
        ProviderSubmission.objects.filter(job=job).values_list("attempt", "state")
    )
    assert states == {1: "abandoned", 2: "succeeded"}


@pytest.mark.django_db(transaction=True)
def test_out_of_memory_failure_is_final(replicate, catalog, client):
    replicate.inject("fail_job", error="CUDA out of memory. Tried to allocate 9.00 GiB")
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_rejected_input"
    assert job.payment_status == "refunded"
    assert Refund.objects.get(job=job).status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_rate_limit_retried(replicate, catalog, client):
    replicate.inject(
        "submit_error",
        status=429,
        retry_after=1,
        error="Request was throttled. Your rate limit resets in ~1s.",
    )
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "completed"
    retry = job.events.get(event="upscale_retry_scheduled")
    assert retry.data["delay_seconds"] >= 1.0


@pytest.mark.django_db(transaction=True)
def test_invalid_input_rejected(replicate, catalog, client, settings):
    settings.REPLICATE_FACE_ENHANCE = "yes"
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_rejected_input"
    assert "face_enhance" in job.failure_detail


@pytest.mark.django_db(transaction=True)
def test_output_redirect_to_metadata_blocked(replicate, catalog, client, settings):
    replicate.inject(
        "redirect_result", location="http://169.254.169.254/latest/meta-data/iam/"
    )
    job = drive(paid_job(catalog), replicate, client=client)

    assert job.status == "failed"
    assert job.failure_code == "result_url_blocked"
    assert job.payment_status == "refunded"


@pytest.mark.django_db(transaction=True)
def test_stale_signed_webhook_rejected(replicate, catalog, client):
    replicate.process_seconds = 3600
    job = paid_job(catalog)
    run_tasks()
    job.refresh_from_db()
    prediction = replicate.jobs[job.provider_job_id]
    body, headers = replicate.callback_body(prediction)
    headers["webhook-timestamp"] = str(int(time.time()) - 3600)

    status = DjangoApp(client).post(prediction.webhook, body, headers)

    assert status == 400
    job.refresh_from_db()
    assert job.status == "processing"


# Signature checks


def signed_headers(body, *, secret=SECRET, message_id="msg_1", timestamp=None):
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign_webhook(secret, message_id, timestamp, body),
    }


def test_signature_matches_standard_webhooks_scheme():
    body = b'{"id": "abc", "status": "succeeded"}'
    headers = signed_headers(body, timestamp=1700000000)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()

    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()
    verify_webhook(SECRET, headers, body, now=1700000000)


def test_signature_accepted_from_standard_webhooks_library():
    # An independent Standard Webhooks implementation signs; ours verifies.
    body = b'{"id": "abc", "status": "succeeded"}'
    sent_at = datetime.now(UTC)
    signature = standardwebhooks.Webhook(SECRET).sign("msg_7", sent_at, body)
    headers = {
        "webhook-id": "msg_7",
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature,
    }

    verify_webhook(SECRET, headers, body)


def test_fake_webhook_verified_by_standard_webhooks_library():
    fake = FakeReplicate()
    prediction = type("Prediction", (), {"faults": {}})()
    fake.prediction_json = lambda _prediction: {"id": "abc", "status": "succeeded"}

    body, headers = fake.callback_body(prediction)

    assert standardwebhooks.Webhook(fake.webhook_secret).verify(body, headers) == {
        "id": "abc",
        "status": "succeeded",
    }
    fake.server.server_close()


def test_unpadded_secret_accepted():
    unpadded = SECRET.rstrip("=")
    body = b"{}"

    verify_webhook(unpadded, signed_headers(body), body)


def test_signature_over_other_body_rejected():
    headers = signed_headers(b'{"status": "failed"}')

    with pytest.raises(CallbackRejected, match="matches"):
        verify_webhook(SECRET, headers, b'{"status": "succeeded"}')


def test_signature_with_other_secret_rejected():
    other = "whsec_" + base64.b64encode(b"another secret key of 32 bytes!!").decode()
    body = b"{}"

    with pytest.raises(CallbackRejected):
        verify_webhook(SECRET, signed_headers(body, secret=other), body)


def test_any_listed_v1_signature_accepted():
    body = b"{}"
    headers = signed_headers(body)
    headers["webhook-signature"] = "v2,abc v1,AAAA " + headers["webhook-signature"]

    verify_webhook(SECRET, headers, body)


@pytest.mark.parametrize("skew", [-301, 301])
def test_timestamp_outside_tolerance_rejected(skew):
    body = b"{}"
    headers = signed_headers(body, timestamp=1700000000)

    with pytest.raises(CallbackRejected, match="tolerance"):
        verify_webhook(SECRET, headers, body, now=1700000000 + skew)


@pytest.mark.parametrize(
    "missing", ["webhook-id", "webhook-timestamp", "webhook-signature"]
)
def test_missing_header_rejected(missing):
    body = b"{}"
    headers = signed_headers(body)
    del headers[missing]

    with pytest.raises(CallbackRejected, match="missing"):
        verify_webhook(SECRET, headers, body)


# Configuration


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("REPLICATE_API_TOKEN", ""),
        ("REPLICATE_WEBHOOK_SECRET", ""),
        ("REPLICATE_WEBHOOK_SECRET", "not-a-whsec-secret"),
        ("REPLICATE_MODEL", "real-esrgan"),
    ],
)
def test_missing_or_invalid_setting_named(settings, setting, value):
    settings.SMI_UPSCALERS = ["replicate"]
    settings.REPLICATE_API_TOKEN = "r8_token"
    settings.REPLICATE_WEBHOOK_SECRET = SECRET
    settings.REPLICATE_MODEL = "nightmareai/real-esrgan"
    settings.REPLICATE_VERSION = ""
    setattr(settings, setting, value)

    with pytest.raises(ImproperlyConfigured, match=setting):
        check_configuration()
