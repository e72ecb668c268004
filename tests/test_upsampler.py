"""Upsampler jobs end to end against the loopback fake, including every fault.

Each fault ends in its documented outcome: a retry that completes the job,
or a failure with a reason code followed by a refund. No job is left
processing.
"""

import email
import email.policy
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django_tasks_db.models import DBTaskResult
from PIL import Image

from sellmyimages.logredact import redact
from sellmyimages.payments.models import Refund
from sellmyimages.upscaling.backends import check_configuration
from sellmyimages.upscaling.models import ProviderSubmission
from tests.conftest import REPO, files_in, run_tasks
from tests.factories import force_status, make_job
from tests.fakes.loopback import DjangoApp, drive
from tests.fakes.upsampler import upsampler  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

CAT = "photo_cat_chelsea_451x300.png"
BUYER = "buyer@example.com"


def paid_job(catalog, name=CAT, resolution="4x"):
    job = make_job(catalog(name), resolution=resolution, email=BUYER)
    return force_status(job, "pending")


def events(job):
    return list(job.events.values_list("event", flat=True))


def event_reasons(job, name):
    return list(job.events.filter(event=name).values_list("reason", flat=True))


def buyer_subjects(settings):
    subjects = []
    for path in files_in(settings.SMI_OUTBOX_DIR):
        message = email.message_from_bytes(
            path.read_bytes(), policy=email.policy.default
        )
        if message["To"] == BUYER:
            subjects.append(message["Subject"])
    return subjects


def assert_refunded(job):
    assert job.payment_status == "refunded"
    refund = Refund.objects.get(job=job)
    assert refund.status == "succeeded"
    assert refund.amount == job.customer_price


def assert_settled(job):
    """Check that nothing about the job is left waiting."""
    assert job.next_poll_at is None
    open_states = ("sending", "in_doubt", "accepted", "collecting")
    assert not ProviderSubmission.objects.filter(
        job=job, state__in=open_states
    ).exists()


def submit_only(catalog, upsampler):
    """Create a paid job and let the worker submit it; the fake keeps it running."""
    upsampler.process_seconds = 3600
    job = paid_job(catalog)
    run_tasks()
    job.refresh_from_db()
    assert job.status == "processing"
    return job


@pytest.fixture
def polling(settings):
    """Poll the provider every few tenths of a second."""
    settings.SMI_PROVIDER_POLL_INITIAL_SECONDS = 0.2
    settings.SMI_PROVIDER_POLL_MAX_SECONDS = 0.4


# The normal path


def test_job_completes_through_callback(upsampler, catalog, client, settings):
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed", job.failure_detail
    assert job.provider == "upsampler"
    assert job.provider_job_id in upsampler.jobs
    assert (job.output_width, job.output_height) == (1804, 1200)
    output = Path(job.output_path)
    assert hashlib.sha256(output.read_bytes()).hexdigest() == job.output_sha256
    with Image.open(output) as image:
        assert image.size == (1804, 1200)
    assert len(buyer_subjects(settings)) == 1
    assert job.download_expires_at is not None
    # The callback was confirmed with the status API before anything happened.
    assert upsampler.count("GET", r"/api/v1/status/.+") >= 1
    assert upsampler.callback_statuses == [202]
    assert_settled(job)


def test_request_matches_upsampler_format(upsampler, catalog, client, settings):
    job = drive(paid_job(catalog), upsampler, client=client)

    body = upsampler.jobs[job.provider_job_id].body
    assert set(body) == {"input", "webhook"}
    assert body["input"]["upscaleFactor"] == 4
    assert body["input"]["inputImageType"] == "universal"
    assert body["input"]["globalCreativity"] == 7
    assert body["input"]["detail"] == 8
    assert body["input"]["imageUrl"].startswith("http://testserver/webhooks/source/")
    assert body["webhook"].startswith("http://testserver/webhooks/upsampler/")
    # The callback secret differs from the source URL's signature.
    assert body["webhook"].rsplit("/", 1)[1] not in body["input"]["imageUrl"]


def test_empty_levels_left_out_of_request(upsampler, catalog, client, settings):
    settings.UPSAMPLER_CREATIVITY = ""
    settings.UPSAMPLER_DETAIL = ""
    job = drive(paid_job(catalog), upsampler, client=client)

    sent = upsampler.jobs[job.provider_job_id].body["input"]
    assert "globalCreativity" not in sent
    assert "detail" not in sent


def test_credits_stored_and_overcharge_recorded(upsampler, catalog, client):
    upsampler.inject("overcharge", extra=5)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    # 1804 x 1200 is 2.2 MP, one credit at a credit per 4 MP, plus 5 extra.
    assert job.credits_required == 1
    assert job.credits_charged == 6
    assert event_reasons(job, "credits_over_quote") == [
        "upsampler charged 6 credits, quoted 1.00"
    ]
    submission = ProviderSubmission.objects.get(job=job)
    assert submission.credits_quoted == 1
    assert submission.credits_charged == 6


# Callbacks


def test_missing_callback_completed_by_polling(upsampler, catalog, client, polling):
    upsampler.inject("no_callback")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert upsampler.callback_statuses == []
    assert "provider_callback" not in events(job)
    assert_settled(job)


def test_duplicate_callback_changes_nothing(upsampler, catalog, client, settings):
    upsampler.inject("duplicate_callback")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert upsampler.callback_statuses == [202, 202]
    assert job.events.filter(to_status="completed").count() == 1
    assert "provider_callback_ignored" in events(job)
    assert len(buyer_subjects(settings)) == 1


def test_callback_with_wrong_secret_refused(upsampler, catalog, client, polling):
    upsampler.inject("wrong_secret_callback")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert upsampler.callback_statuses == [404]
    assert "provider_callback" not in events(job)
    # Polling still finds the result.
    assert job.status == "completed"


def test_forged_success_callback_not_trusted(upsampler, catalog, client):
    job = submit_only(catalog, upsampler)
    fake_job = upsampler.jobs[job.provider_job_id]
    forged = {
        "id": fake_job.id,
        "status": "SUCCESS",
        "imageUrl": "http://127.0.0.1:9/x.png",
    }

    response = client.post(
        DjangoApp(client).path_of(fake_job.webhook),
        forged,
        content_type="application/json",
    )
    run_tasks()

    assert response.status_code == 202
    job.refresh_from_db()
    assert job.status == "processing"
    assert ProviderSubmission.objects.get(job=job).state == "accepted"
    assert "result_rejected" not in events(job)

    upsampler.process_seconds = 0
    fake_job.ready_at = 0
    job = drive(job, upsampler, client=client)
    assert job.status == "completed"


def test_callback_for_another_provider_job_ignored(upsampler, catalog, client):
    job = submit_only(catalog, upsampler)
    webhook = upsampler.jobs[job.provider_job_id].webhook

    client.post(
        DjangoApp(client).path_of(webhook),
        {"id": "someone-elses-job", "status": "SUCCESS"},
        content_type="application/json",
    )
    run_tasks()

    job.refresh_from_db()
    assert job.status == "processing"
    assert event_reasons(job, "provider_callback_ignored") == [
        "the callback names another provider job"
    ]


def test_unconfirmed_callback_decides_nothing(upsampler, catalog, client):
    job = submit_only(catalog, upsampler)
    # The status API fails once, while Upsampler delivers its callback twice.
    upsampler.inject("status_error", status=500)
    fake_job = upsampler.jobs[job.provider_job_id]
    fake_job.faults["duplicate_callback"] = {}
    fake_job.ready_at = 0

    job = drive(job, upsampler, client=client)

    assert job.status == "completed"
    assert event_reasons(job, "provider_callback_unconfirmed") == [
        "provider_unavailable"
    ]
    assert upsampler.callback_statuses == [202, 202]


def test_callback_must_be_post(upsampler, catalog, client):
    job = submit_only(catalog, upsampler)
    webhook = upsampler.jobs[job.provider_job_id].webhook

    response = client.get(DjangoApp(client).path_of(webhook))

    assert response.status_code == 405


# Submission errors


def test_server_errors_retried_until_accepted(upsampler, catalog, client):
    upsampler.inject("submit_error", times=2, status=500)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert event_reasons(job, "provider_submit_failed") == ["provider_unavailable"] * 2
    assert event_reasons(job, "upscale_retry_scheduled") == ["provider_unavailable"] * 2
    states = list(
        ProviderSubmission.objects.filter(job=job)
        .order_by("attempt")
        .values_list("state", flat=True)
    )
    assert states == ["rejected", "rejected", "succeeded"]
    assert job.attempt_count == 3


def test_persistent_server_errors_fail_and_refund(upsampler, catalog, client, settings):
    settings.SMI_PROVIDER_MAX_ATTEMPTS = 3
    upsampler.inject("submit_error", times=10, status=503)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_unavailable"
    assert upsampler.count("POST", r"/api/v1/precise-upscale") == 3
    assert_refunded(job)
    assert_settled(job)
    assert not any(
        "download" in subject.lower() for subject in buyer_subjects(settings)
    )


def test_rate_limit_waits_for_retry_after(upsampler, catalog, client):
    upsampler.inject(
        "submit_error", status=429, retry_after=1, error="Too many requests"
    )
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    retry = job.events.get(event="upscale_retry_scheduled")
    assert retry.reason == "provider_rate_limited"
    assert retry.data["retry_after"] == 1.0
    assert retry.data["delay_seconds"] >= 1.0
    task = DBTaskResult.objects.get(
        task_path="sellmyimages.upscaling.tasks.process_job",
        args_kwargs__kwargs__attempt=2,
    )
    refused = ProviderSubmission.objects.get(job=job, attempt=1)
    assert refused.state == "rejected"
    assert (task.run_after - refused.finished_at).total_seconds() >= 1.0


def test_submit_timeout_resubmitted_once(upsampler, catalog, client, settings):
    upsampler.inject("submit_timeout", seconds=1.5)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert event_reasons(job, "provider_submit_failed") == ["provider_timeout"]
    # Upsampler cannot be asked about the first job, so it was sent again.
    assert "provider_resubmitting" in events(job)
    assert upsampler.count("POST", r"/api/v1/precise-upscale") == 2
    assert job.events.filter(to_status="completed").count() == 1
    assert len(buyer_subjects(settings)) == 1
    assert_settled(job)


def test_bad_input_rejected_without_retry(upsampler, catalog, client):
    upsampler.inject("submit_error", status=400, error="Image too large")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_rejected_input"
    assert "Image too large" in job.failure_detail
    assert upsampler.count("POST", r"/api/v1/precise-upscale") == 1
    assert_refunded(job)


def test_invalid_api_key_fails_after_retries(upsampler, catalog, client, settings):
    settings.UPSAMPLER_API_KEY = "not-the-key"
    settings.SMI_PROVIDER_MAX_ATTEMPTS = 2
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_account_error"
    assert_refunded(job)


def test_unreachable_provider_fails_and_refunds(upsampler, catalog, client, settings):
    settings.UPSAMPLER_API_BASE = "http://127.0.0.2:9/api/v1"
    settings.SMI_PROVIDER_MAX_ATTEMPTS = 2
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_unreachable"
    assert_refunded(job)
    assert_settled(job)


# Jobs that fail at the provider


def test_provider_rejecting_image_is_final(upsampler, catalog, client):
    upsampler.inject("fail_job", error="Image exceeds the maximum size")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_rejected_input"
    assert upsampler.count("POST", r"/api/v1/precise-upscale") == 1
    assert_refunded(job)


def test_provider_internal_failure_retried(upsampler, catalog, client):
    upsampler.inject("fail_job", error="Worker crashed")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert event_reasons(job, "provider_job_failed") == ["provider_job_failed"]
    assert upsampler.count("POST", r"/api/v1/precise-upscale") == 2


def test_stuck_job_fails_at_deadline(upsampler, catalog, client, settings, polling):
    settings.SMI_PROVIDER_MAX_PROCESSING_MINUTES = 0.04
    upsampler.inject("stuck")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "provider_timeout"
    assert_refunded(job)
    assert_settled(job)

    # A callback that comes after the failure changes nothing.
    fake_job = upsampler.jobs[job.provider_job_id]
    del fake_job.faults["stuck"]
    upsampler.advance(DjangoApp(client))
    run_tasks()
    job.refresh_from_db()
    assert upsampler.callback_statuses == [202]
    assert job.status == "failed"
    assert "provider_callback_ignored" in events(job)
    assert files_in(settings.SMI_OUTPUT_DIR) == []


# Results


def test_wrong_size_result_retried_once(upsampler, catalog, client):
    upsampler.inject("wrong_size")
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert event_reasons(job, "result_rejected") == ["result_wrong_size"]
    assert (job.output_width, job.output_height) == (1804, 1200)


def test_wrong_size_result_twice_fails(upsampler, catalog, client, settings):
    upsampler.inject("wrong_size", times=2)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "result_wrong_size"
    assert_refunded(job)
    assert files_in(settings.SMI_OUTPUT_DIR) == []


def test_huge_result_rejected(upsampler, catalog, client, settings):
    upsampler.inject("huge_result", times=2, size=40 * 1024 * 1024)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "result_too_large"
    assert_refunded(job)
    assert files_in(settings.SMI_OUTPUT_DIR) == []


def test_result_that_is_not_an_image_rejected(upsampler, catalog, client, settings):
    upsampler.inject("not_an_image", times=2)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "result_not_an_image"
    assert_refunded(job)


@pytest.mark.parametrize(
    "location",
    ["http://127.0.0.1:9/secret", "http://169.254.169.254/latest/meta-data/"],
)
def test_result_redirect_to_private_address_blocked(
    upsampler, catalog, client, settings, location
):
    upsampler.inject("redirect_result", location=location)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "result_url_blocked"
    # A blocked URL is final: the job is not sent again.
    assert upsampler.count("POST", r"/api/v1/precise-upscale") == 1
    assert_refunded(job)
    assert files_in(settings.SMI_OUTPUT_DIR) == []


def test_slow_result_fetched_again(upsampler, catalog, client, polling):
    upsampler.inject("slow_result", seconds=3, fetches=1)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert event_reasons(job, "result_fetch_retry") == ["result_fetch_failed"]
    assert upsampler.count("POST", r"/api/v1/precise-upscale") == 1


def test_result_always_slow_fails(upsampler, catalog, client, settings, polling):
    settings.SMI_PROVIDER_MAX_ATTEMPTS = 2
    upsampler.inject("slow_result", seconds=3)
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "result_fetch_failed"
    assert_refunded(job)


# Without the status API


def test_callback_only_mode_takes_result_from_allowed_host(
    upsampler, catalog, client, settings
):
    settings.UPSAMPLER_CONFIRM_WITH_STATUS_API = False
    settings.UPSAMPLER_RESULT_HOSTS = ["127.0.0.2"]
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "completed"
    assert upsampler.count("GET", r"/api/v1/status/.+") == 0


def test_callback_only_mode_refuses_other_hosts(upsampler, catalog, client, settings):
    settings.UPSAMPLER_CONFIRM_WITH_STATUS_API = False
    settings.UPSAMPLER_RESULT_HOSTS = ["results.upsampler.example"]
    job = drive(paid_job(catalog), upsampler, client=client)

    assert job.status == "failed"
    assert job.failure_code == "result_url_blocked"
    assert_refunded(job)


def test_callback_only_mode_treats_failure_as_unconfirmed(
    upsampler, catalog, client, settings
):
    settings.UPSAMPLER_CONFIRM_WITH_STATUS_API = False
    settings.UPSAMPLER_RESULT_HOSTS = ["127.0.0.2"]
    upsampler.inject("fail_job", error="Image too large")
    job = drive(paid_job(catalog), upsampler, client=client)

    # An unsigned FAILED callback may be forged, so it only causes a retry.
    assert job.status == "completed"
    assert event_reasons(job, "provider_job_failed") == ["provider_job_failed"]


# The signed source URL


def source_path(upsampler, job, client):
    return DjangoApp(client).path_of(upsampler.jobs[job.provider_job_id].source_url)


def test_source_url_serves_the_original(upsampler, catalog, client, settings):
    job = submit_only(catalog, upsampler)

    response = client.get(source_path(upsampler, job, client))

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == Path(job.source_path).read_bytes()


def test_source_url_expires(upsampler, catalog, client, settings):
    job = submit_only(catalog, upsampler)
    path = source_path(upsampler, job, client)
    settings.SMI_SOURCE_URL_MAX_AGE_SECONDS = 1
    time.sleep(2.1)

    assert client.get(path).status_code == 410


def test_source_url_tampered_or_finished(upsampler, catalog, client):
    job = submit_only(catalog, upsampler)
    path = source_path(upsampler, job, client)
    token = path.split("/")[3]
    other = "0" * 32 + token[32:]

    assert client.get(path.replace(token, other)).status_code == 404

    upsampler.jobs[job.provider_job_id].ready_at = 0
    drive(job, upsampler, client=client)
    assert client.get(path).status_code == 404


@pytest.mark.parametrize(
    ("name", "upright_size"),
    [
        ("jpeg_cmyk_adobe_100x100.jpg", (100, 100)),
        ("tiff_tiled_jpeg_ycbcr_heather_300x225.tif", (300, 225)),
    ],
)
def test_source_converted_to_srgb_png(upsampler, catalog, client, name, upright_size):
    upsampler.process_seconds = 3600
    job = paid_job(catalog, name)
    run_tasks()
    job.refresh_from_db()

    response = client.get(source_path(upsampler, job, client))
    target = Path(job.source_path).with_name("served.png")
    target.write_bytes(b"".join(response.streaming_content))

    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.mode in ("RGB", "RGBA")
        assert image.size == upright_size


def test_rotated_phone_photo_sent_upright(upsampler, catalog, client, settings):
    upsampler.process_seconds = 3600
    job = paid_job(catalog, "phone_photo_dog_4032x3024_exif_orientation6.jpg")
    run_tasks()
    job.refresh_from_db()

    response = client.get(source_path(upsampler, job, client))
    target = Path(settings.DATA_DIR) / "served.png"
    target.write_bytes(b"".join(response.streaming_content))

    with Image.open(target) as image:
        assert image.size == (3024, 4032)


def test_secrets_redacted_from_logged_paths(upsampler, catalog, client):
    job = submit_only(catalog, upsampler)
    fake_job = upsampler.jobs[job.provider_job_id]
    secret = fake_job.webhook.rsplit("/", 1)[1]
    token = fake_job.source_url.split("/")[5]

    logged = redact(f"Not Found: {fake_job.webhook} and {fake_job.source_url}")

    assert secret not in logged
    assert token not in logged


# Configuration


def test_missing_api_key_named(settings):
    settings.SMI_UPSCALERS = ["upsampler", "local"]
    settings.UPSAMPLER_API_KEY = ""

    with pytest.raises(ImproperlyConfigured, match="UPSAMPLER_API_KEY"):
        check_configuration()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPSAMPLER_CREATIVITY", "eleven"),
        ("UPSAMPLER_DETAIL", "11"),
        ("UPSAMPLER_INPUT_IMAGE_TYPE", "photo"),
        ("UPSAMPLER_API_BASE", "upsampler.com/api/v1"),
    ],
)
def test_invalid_setting_named(settings, name, value):
    settings.SMI_UPSCALERS = ["upsampler"]
    settings.UPSAMPLER_API_KEY = "key"
    setattr(settings, name, value)

    with pytest.raises(ImproperlyConfigured, match=name):
        check_configuration()


def test_callback_only_mode_needs_result_hosts(settings):
    settings.SMI_UPSCALERS = ["upsampler"]
    settings.UPSAMPLER_API_KEY = "key"
    settings.UPSAMPLER_CONFIRM_WITH_STATUS_API = False
    settings.UPSAMPLER_RESULT_HOSTS = []

    with pytest.raises(ImproperlyConfigured, match="UPSAMPLER_RESULT_HOSTS"):
        check_configuration()


def test_unknown_engine_named(settings):
    settings.SMI_UPSCALERS = ["upsampler2"]

    with pytest.raises(ImproperlyConfigured, match="'upsampler2'"):
        check_configuration()


def test_startup_refused_without_api_key(tmp_path):
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SMI_", "UPSAMPLER_", "REPLICATE_", "DJANGO_"))
    }
    environment.update(
        SMI_DATA_DIR=str(tmp_path),
        SMI_UPSCALERS="upsampler,local",
        DJANGO_SETTINGS_MODULE="sellmyimages.settings",
    )
    completed = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode != 0
    assert "ImproperlyConfigured" in completed.stderr
    assert "UPSAMPLER_API_KEY" in completed.stderr


def test_source_job_payload_is_json(upsampler, catalog, client):
    """The confirming task's arguments survive the task queue's JSON round trip."""
    job = drive(paid_job(catalog), upsampler, client=client)

    confirmations = DBTaskResult.objects.filter(
        task_path="sellmyimages.upscaling.collect.confirm_callback"
    )
    assert confirmations.count() == 1
    args = confirmations.get().args_kwargs["args"]
    assert args[1] == job.provider_job_id
    assert json.loads(json.dumps(args[2]))["status"] == "SUCCESS"


def test_admin_shows_submission_without_secret_hash(upsampler, catalog, client):
    job = drive(paid_job(catalog), upsampler, client=client)
    submission = ProviderSubmission.objects.get(job=job)
    admin_user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)

    listing = client.get("/admin/upscaling/providersubmission/")
    page = client.get(f"/admin/upscaling/providersubmission/{submission.pk}/change/")

    assert listing.status_code == 200
    assert page.status_code == 200
    assert b"succeeded" in page.content
    assert submission.webhook_secret_hash.encode() not in page.content
    assert client.get("/admin/upscaling/circuitstate/").status_code == 200
