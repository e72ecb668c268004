"""Outgoing webhooks: signed deliveries, retries, address rules and the admin."""

import http.server
import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from standardwebhooks import Webhook, WebhookVerificationError

from sellmyimages.hooks import sending
from sellmyimages.hooks.models import (
    DeliveryAttempt,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from sellmyimages.hooks.signing import generate_secret, sign
from sellmyimages.jobs.models import Job
from tests.conftest import run_tasks

pytestmark = pytest.mark.django_db(transaction=True)

ALL_EVENTS = ["job_created", "payment_completed", "job_completed", "job_failed"]
BUYER = "hooks-buyer@example.com"


class WebhookReceiver:
    """An HTTP server on a loopback address that records and verifies POSTs.

    It responds with the status codes in `responses` in turn, then 200.
    """

    def __init__(self, host, secret, responses=()):
        self.secret = secret
        self.responses = list(responses)
        self.received = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver.lock:
                    status = receiver.responses.pop(0) if receiver.responses else 200
                    receiver.received.append(
                        {
                            "path": self.path,
                            "headers": headers,
                            "body": body,
                            "verified": verified,
                            "status": status,
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"receiver answered {status}".encode())

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/hooks/smi"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def events(self):
        return [json.loads(entry["body"])["type"] for entry in self.received]


@pytest.fixture
def webhook_settings(settings):
    settings.SMI_FETCH_ALLOWED_ADDRESSES = ["127.0.0.2"]
    settings.SMI_WEBHOOK_RETRY_BASE_SECONDS = 0
    settings.SMI_WEBHOOK_MAX_ATTEMPTS = 4
    settings.SMI_WEBHOOK_TIMEOUT_SECONDS = 5
    return settings


def make_endpoint(url, events=ALL_EVENTS, **extra):
    endpoint = WebhookEndpoint(url=url, events=list(events), **extra)
    endpoint.full_clean()
    endpoint.save()
    return endpoint


def buy(client, catalog_name, email=BUYER):
    created = client.post(
        "/api/v1/jobs",
        {"catalog_image": catalog_name, "resolution": "4x", "post_id": "42"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    checkout = created.json()["checkout_url"].removeprefix("http://testserver")
    paid = client.post(checkout, {"action": "pay", "email": email})
    assert paid.status_code == 302
    return created.json()["job_id"]


def test_signature_matches_standard_webhooks_library():
    secret = generate_secret()
    body = b'{"type":"job_completed","data":{"job_id":"x"}}'
    timestamp = 1_767_225_600
    ours = sign(secret, "msg_abc", timestamp, body)
    theirs = Webhook(secret).sign(
        "msg_abc", datetime.fromtimestamp(timestamp, tz=UTC), body
    )
    assert ours == theirs
    assert ours.startswith("v1,")


def test_generated_secrets_differ_and_decode():
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    Webhook(first)  # raises if the secret is not valid base64


def test_lifecycle_delivers_signed_events_and_retries(
    client, catalog, webhook_settings
):
    secret = generate_secret()
    name = catalog("photo_cat_chelsea_451x300.png")
    with WebhookReceiver("127.0.0.2", secret, responses=[500]) as receiver:
        make_endpoint(receiver.url, secret=secret)
        job_id = buy(client, name)
        run_tasks()

    assert all(entry["verified"] for entry in receiver.received)
    # The first POST got a 500, so job_created arrived twice with one id.
    assert Counter(receiver.events()) == Counter(
        {"job_created": 2, "payment_completed": 1, "job_completed": 1}
    )
    created_posts = [
        e for e in receiver.received if json.loads(e["body"])["type"] == "job_created"
    ]
    assert created_posts[0]["status"] == 500
    assert created_posts[1]["status"] == 200
    assert (
        created_posts[0]["headers"]["webhook-id"]
        == created_posts[1]["headers"]["webhook-id"]
    )
    assert created_posts[0]["body"] == created_posts[1]["body"]

    retried = WebhookDelivery.objects.get(event="job_created")
    assert retried.status == DeliveryStatus.SUCCEEDED
    assert retried.attempts == 2
    attempts = list(retried.attempt_log.order_by("number"))
    assert [a.outcome for a in attempts] == ["http_error", "delivered"]
    assert attempts[0].status_code == 500
    assert attempts[0].response_body == "receiver answered 500"
    assert attempts[1].status_code == 200
    assert retried.response_status_code == 200

    completed = json.loads(
        next(e["body"] for e in receiver.received if b"job_completed" in e["body"])
    )
    assert completed["data"]["job_id"] == job_id
    assert completed["data"]["status"] == "completed"
    assert completed["data"]["payment_status"] == "paid"
    assert completed["data"]["resolution"] == "4x"
    assert completed["data"]["price"] == str(
        Job.objects.get(job_id=job_id).customer_price
    )
    assert completed["data"]["post_id"] == "42"
    assert completed["data"]["completed_at"]
    for entry in receiver.received:
        assert BUYER.encode() not in entry["body"]
        assert b"downloads/" not in entry["body"]
        assert entry["headers"]["content-type"] == "application/json"


def test_failed_job_sends_job_failed(client, catalog, webhook_settings):
    secret = generate_secret()
    name = catalog("photo_cat_chelsea_451x300.png")
    with WebhookReceiver("127.0.0.2", secret) as receiver:
        make_endpoint(receiver.url, events=["job_failed"], secret=secret)
        buy(client, name)
        # The original disappears before the worker runs: a permanent failure.
        (webhook_settings.SMI_CATALOG_DIR / name).unlink()
        run_tasks()

    assert receiver.events() == ["job_failed"]
    payload = json.loads(receiver.received[0]["body"])
    assert payload["data"]["status"] == "failed"
    assert payload["data"]["failure_code"]
    assert receiver.received[0]["verified"]


def test_only_subscribed_events_and_active_endpoints(client, catalog, webhook_settings):
    secret = generate_secret()
    name = catalog("photo_cat_chelsea_451x300.png")
    with WebhookReceiver("127.0.0.2", secret) as receiver:
        make_endpoint(receiver.url, events=["payment_completed"], secret=secret)
        make_endpoint(receiver.url + "/off", secret=secret, active=False)
        buy(client, name)
        run_tasks()

    assert receiver.events() == ["payment_completed"]
    assert [e["path"] for e in receiver.received] == ["/hooks/smi"]


def test_retry_waits_with_backoff(client, catalog, webhook_settings):
    webhook_settings.SMI_WEBHOOK_RETRY_BASE_SECONDS = 60
    secret = generate_secret()
    name = catalog("photo_cat_chelsea_451x300.png")
    with WebhookReceiver("127.0.0.2", secret, responses=[503, 503]) as receiver:
        make_endpoint(receiver.url, events=["job_created"], secret=secret)
        client.post(
            "/api/v1/jobs",
            {"catalog_image": name, "resolution": "4x"},
            content_type="application/json",
        )
        before = timezone.now()
        run_tasks()

        delivery = WebhookDelivery.objects.get()
        assert len(receiver.received) == 1
        assert delivery.status == DeliveryStatus.PENDING
        assert delivery.attempts == 1
        # 60 s scaled by a jitter factor between 0.5 and 1.5.
        assert before + timedelta(seconds=29) <= delivery.next_attempt_at
        assert delivery.next_attempt_at <= timezone.now() + timedelta(seconds=91)
        queued = DBTaskResult.objects.get(
            task_path="sellmyimages.hooks.tasks.deliver_webhook", status="READY"
        )
        assert queued.run_after == delivery.next_attempt_at
        assert queued.args_kwargs["args"] == [delivery.pk, 2]

        # The retry is not ready yet, so a worker leaves it alone.
        run_tasks()
        assert len(receiver.received) == 1

        # Bring the retry forward to now, as if its time had come.
        DBTaskResult.objects.filter(pk=queued.pk).update(run_after=timezone.now())
        run_tasks()

    delivery.refresh_from_db()
    assert len(receiver.received) == 2
    assert delivery.attempts == 2
    assert delivery.status == DeliveryStatus.PENDING
    second_wait = (delivery.next_attempt_at - delivery.last_attempt_at).total_seconds()
    # The second delay doubles: 120 s scaled by 0.5 to 1.5.
    assert 59 <= second_wait <= 181


def test_gives_up_after_final_attempt(client, catalog, webhook_settings):
    webhook_settings.SMI_WEBHOOK_MAX_ATTEMPTS = 3
    secret = generate_secret()
    name = catalog("photo_cat_chelsea_451x300.png")
    with WebhookReceiver("127.0.0.2", secret, responses=[500] * 10) as receiver:
        make_endpoint(receiver.url, events=["job_created"], secret=secret)
        client.post(
            "/api/v1/jobs",
            {"catalog_image": name, "resolution": "4x"},
            content_type="application/json",
        )
        run_tasks()

    delivery = WebhookDelivery.objects.get()
    assert len(receiver.received) == 3
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 3
    assert list(delivery.attempt_log.values_list("number", flat=True)) == [1, 2, 3]
    assert "HTTP 500" in delivery.last_error


def test_redirect_is_not_followed(client, catalog, webhook_settings):
    webhook_settings.SMI_WEBHOOK_MAX_ATTEMPTS = 1
    secret = generate_secret()
    with WebhookReceiver("127.0.0.2", secret, responses=[302]) as receiver:
        make_endpoint(receiver.url, events=["job_created"], secret=secret)
        client.post(
            "/api/v1/jobs",
            {
                "catalog_image": catalog("photo_cat_chelsea_451x300.png"),
                "resolution": "4x",
            },
            content_type="application/json",
        )
        run_tasks()

    delivery = WebhookDelivery.objects.get()
    assert len(receiver.received) == 1
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.response_status_code == 302


def test_private_address_url_rejected_by_clean(webhook_settings):
    with pytest.raises(ValidationError) as raised:
        make_endpoint("http://127.0.0.3:8080/hook")
    assert "url" in raised.value.message_dict
    with pytest.raises(ValidationError):
        make_endpoint("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ValidationError):
        make_endpoint("ftp://127.0.0.2/hook")
    with pytest.raises(ValidationError) as raised:
        make_endpoint("http://127.0.0.2/hook", events=["job_exploded"])
    assert "events" in raised.value.message_dict


@pytest.mark.parametrize("host", ["127.0.0.3", "localhost"])
def test_private_address_never_contacted(client, catalog, webhook_settings, host):
    """An endpoint saved without clean() is still refused when sending."""
    secret = generate_secret()
    with WebhookReceiver("127.0.0.3", secret) as receiver:
        url = receiver.url.replace("127.0.0.3", host)
        WebhookEndpoint.objects.create(url=url, events=["job_created"], secret=secret)
        client.post(
            "/api/v1/jobs",
            {
                "catalog_image": catalog("photo_cat_chelsea_451x300.png"),
                "resolution": "4x",
            },
            content_type="application/json",
        )
        run_tasks()

    delivery = WebhookDelivery.objects.get()
    assert receiver.received == []
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 1
    assert DeliveryAttempt.objects.get().outcome == "blocked"
    assert "non-public address" in delivery.last_error


def test_admin_creates_endpoint_with_secret(webhook_settings):
    admin = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    browser = Client()
    browser.force_login(admin)
    # The secret is generated on save, so the add page shows none.
    assert (
        "whsec_"
        not in browser.get("/admin/hooks/webhookendpoint/add/").content.decode()
    )
    response = browser.post(
        "/admin/hooks/webhookendpoint/add/",
        {
            "url": "http://127.0.0.2:9/hook",
            "description": "WordPress",
            "events": ["job_completed", "job_failed"],
            "active": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.events == ["job_completed", "job_failed"]
    assert endpoint.secret.startswith("whsec_")
    page = browser.get(f"/admin/hooks/webhookendpoint/{endpoint.pk}/change/")
    assert endpoint.secret in page.content.decode()

    rejected = browser.post(
        "/admin/hooks/webhookendpoint/add/",
        {"url": "http://10.0.0.5/hook", "events": ["job_completed"], "active": "on"},
    )
    assert rejected.status_code == 200
    assert "non-public address (private)" in rejected.content.decode()
    assert WebhookEndpoint.objects.count() == 1


def test_admin_resend_sends_again(client, catalog, webhook_settings):
    webhook_settings.SMI_WEBHOOK_MAX_ATTEMPTS = 1
    secret = generate_secret()
    with WebhookReceiver("127.0.0.2", secret, responses=[500]) as receiver:
        endpoint = make_endpoint(receiver.url, events=["job_created"], secret=secret)
        client.post(
            "/api/v1/jobs",
            {
                "catalog_image": catalog("photo_cat_chelsea_451x300.png"),
                "resolution": "4x",
            },
            content_type="application/json",
        )
        run_tasks()
        delivery = WebhookDelivery.objects.get()
        assert delivery.status == DeliveryStatus.FAILED

        admin = get_user_model().objects.create_superuser(
            "ops", "ops@example.com", "pw"
        )
        browser = Client()
        browser.force_login(admin)
        page = browser.get(f"/admin/hooks/webhookendpoint/{endpoint.pk}/change/")
        assert delivery.msg_id in page.content.decode()
        response = browser.post(
            "/admin/hooks/webhookdelivery/",
            {"action": "resend_deliveries", "_selected_action": [delivery.pk]},
        )
        assert response.status_code == 302
        run_tasks()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.attempts == 2
    assert len(receiver.received) == 2
    ids = {entry["headers"]["webhook-id"] for entry in receiver.received}
    assert ids == {delivery.msg_id}


def test_task_run_twice_sends_once(client, catalog, webhook_settings):
    secret = generate_secret()
    with WebhookReceiver("127.0.0.2", secret) as receiver:
        make_endpoint(receiver.url, events=["job_created"], secret=secret)
        client.post(
            "/api/v1/jobs",
            {
                "catalog_image": catalog("photo_cat_chelsea_451x300.png"),
                "resolution": "4x",
            },
            content_type="application/json",
        )
        delivery = WebhookDelivery.objects.get()
        # A duplicate of the first attempt's task, as a recovery sweep might add.
        from sellmyimages.hooks.tasks import deliver_webhook

        deliver_webhook.enqueue(delivery.pk, 1)
        run_tasks()
        assert sending.send_attempt(delivery.pk, 1) == "not_claimed"

    assert len(receiver.received) == 1
    assert WebhookDelivery.objects.get().attempts == 1
