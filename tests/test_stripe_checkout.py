"""Stripe Checkout: the session request, the success and cancel pages, fees, settings."""

import os
import subprocess
import sys
import time
from decimal import Decimal

import pytest
import stripe

from sellmyimages.jobs.models import Job, JobEvent
from sellmyimages.jobs.pricing import to_minor_units
from sellmyimages.payments.service import record_payment_fee
from tests.fakes.stripe_fixtures import (  # noqa: F401
    API_KEY,
    REPO,
    fake_stripe,
    localstripe,
    stripe_shop,
)

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE = "photo_cat_chelsea_451x300.png"


def create_job(client, catalog, email=None):
    body = {"catalog_image": catalog(IMAGE), "resolution": "4x"}
    if email:
        body["email"] = email
    response = client.post("/api/v1/jobs", body, content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()


def test_session_request_follows_stripe_rules(client, catalog, stripe_shop, settings):
    before = int(time.time())
    created = create_job(client, catalog, email="buyer@example.com")

    job = Job.objects.get(job_id=created["job_id"])
    [request] = stripe_shop.requests_to("POST", "/v1/checkout/sessions")
    params = request.params
    assert params["mode"] == "payment"
    [item] = params["line_items"]
    assert item["quantity"] == "1"
    assert item["price_data"]["currency"] == "usd"
    assert item["price_data"]["unit_amount"] == str(to_minor_units(job.customer_price))
    assert item["price_data"]["product_data"]["name"] == "Upscaled image, 4x"
    assert params["metadata"] == {"job_id": str(job.job_id)}
    assert params["client_reference_id"] == str(job.job_id)
    assert params["payment_intent_data"]["metadata"] == {"job_id": str(job.job_id)}
    assert params["customer_email"] == "buyer@example.com"
    assert params["success_url"].endswith(
        "/checkout/stripe/success?session_id={CHECKOUT_SESSION_ID}"
    )
    assert (
        params["cancel_url"] == f"http://testserver/checkout/stripe/cancel/{job.job_id}"
    )
    lifetime = int(params["expires_at"]) - before
    assert 23 * 3600 < lifetime <= 24 * 3600
    assert request.headers["Idempotency-Key"] == f"checkout-{job.job_id}"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"

    session = stripe_shop.sessions[job.checkout_session_id]
    assert created["checkout_url"] == session["url"]
    assert session["amount_total"] == to_minor_units(job.customer_price)
    assert job.payment_provider == "stripe"


def test_session_without_email_lets_checkout_ask(client, catalog, stripe_shop):
    create_job(client, catalog)
    [request] = stripe_shop.requests_to("POST", "/v1/checkout/sessions")
    assert "customer_email" not in request.params


def test_session_expiry_never_under_stripe_minimum(
    client, catalog, stripe_shop, settings
):
    settings.SMI_ABANDON_AFTER_HOURS = 0
    before = int(time.time())
    create_job(client, catalog)
    [request] = stripe_shop.requests_to("POST", "/v1/checkout/sessions")
    lifetime = int(request.params["expires_at"]) - before
    assert 30 * 60 < lifetime < 35 * 60


def test_fake_rejects_what_stripe_rejects(stripe_shop):
    client = stripe.StripeClient(
        API_KEY, base_addresses={"api": stripe_shop.url}, max_network_retries=0
    )
    base = {
        "mode": "payment",
        "success_url": "http://testserver/ok",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 500,
                    "product_data": {"name": "x"},
                },
            }
        ],
    }
    too_soon = {**base, "expires_at": int(time.time()) + 600}
    with pytest.raises(stripe.InvalidRequestError, match="30 minutes"):
        client.v1.checkout.sessions.create(too_soon)
    float_amount = {
        **base,
        "line_items": [
            {
                **base["line_items"][0],
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "5.00",
                    "product_data": {"name": "x"},
                },
            }
        ],
    }
    with pytest.raises(stripe.InvalidRequestError, match="Invalid integer"):
        client.v1.checkout.sessions.create(float_amount)
    assert client.v1.checkout.sessions.create(base).status == "open"


def test_checkout_outage_leaves_no_job(client, catalog, stripe_shop):
    stripe_shop.add_fault("POST", "/v1/checkout/sessions", status=503)
    response = client.post(
        "/api/v1/jobs",
        {"catalog_image": catalog(IMAGE), "resolution": "4x"},
        content_type="application/json",
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "payment_unavailable"
    assert Job.objects.count() == 0


def test_success_page_records_payment_without_webhook(client, catalog, stripe_shop):
    created = create_job(client, catalog)
    job = Job.objects.get(job_id=created["job_id"])
    session = stripe_shop.complete_session(
        job.checkout_session_id, email="payer@example.com"
    )

    response = client.get(
        f"/checkout/stripe/success?session_id={job.checkout_session_id}"
    )
    assert response.status_code == 302
    assert response["Location"] == f"/orders/{job.job_id}/"
    again = client.get(f"/checkout/stripe/success?session_id={job.checkout_session_id}")
    assert again.status_code == 302

    job.refresh_from_db()
    assert job.status == "pending"
    assert job.payment_status == "paid"
    assert job.payment_intent_id == session["payment_intent"]
    assert job.email == "payer@example.com"
    assert JobEvent.objects.filter(job=job, event="payment_completed").count() == 1
    assert (
        JobEvent.objects.get(job=job, event="payment_completed").actor == "success_page"
    )


def test_success_page_keeps_job_email(client, catalog, stripe_shop):
    created = create_job(client, catalog, email="first@example.com")
    job = Job.objects.get(job_id=created["job_id"])
    stripe_shop.complete_session(job.checkout_session_id, email="other@example.com")
    client.get(f"/checkout/stripe/success?session_id={job.checkout_session_id}")
    job.refresh_from_db()
    assert job.email == "first@example.com"


def test_success_page_waits_for_unpaid_session(client, catalog, stripe_shop):
    created = create_job(client, catalog)
    job = Job.objects.get(job_id=created["job_id"])
    stripe_shop.complete_session(job.checkout_session_id, paid=False)

    response = client.get(
        f"/checkout/stripe/success?session_id={job.checkout_session_id}"
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == "awaiting_payment"
    assert job.payment_status == "unpaid"


def test_success_page_rejects_unknown_session(client, stripe_shop):
    assert (
        client.get("/checkout/stripe/success?session_id=cs_test_nothing").status_code
        == 404
    )
    assert client.get("/checkout/stripe/success?session_id=../../v1").status_code == 404
    assert stripe_shop.requests == []


def test_cancel_page_leaves_job_awaiting_payment(client, catalog, stripe_shop):
    created = create_job(client, catalog)
    job = Job.objects.get(job_id=created["job_id"])

    page = client.get(f"/checkout/stripe/cancel/{job.job_id}")
    assert page.status_code == 200
    assert b"Return to checkout" in page.content
    resume = client.get(f"/checkout/stripe/resume/{job.job_id}")
    assert resume.status_code == 302
    assert resume["Location"] == stripe_shop.sessions[job.checkout_session_id]["url"]

    job.refresh_from_db()
    assert job.status == "awaiting_payment"
    assert job.payment_status == "unpaid"


def test_fee_read_from_balance_transaction(client, catalog, stripe_shop):
    created = create_job(client, catalog)
    job = Job.objects.get(job_id=created["job_id"])
    stripe_shop.complete_session(job.checkout_session_id)
    client.get(f"/checkout/stripe/success?session_id={job.checkout_session_id}")
    job.refresh_from_db()

    # localstripe charges no fee: its balance transaction has 0.
    assert record_payment_fee(job.job_id) == "recorded"
    assert Job.objects.get(pk=job.pk).payment_fee == Decimal("0.00")
    assert record_payment_fee(job.job_id) == "already_recorded"


def test_fee_stored_in_major_units(client, catalog, stripe_shop):
    created = create_job(client, catalog)
    job = Job.objects.get(job_id=created["job_id"])
    session = stripe_shop.complete_session(job.checkout_session_id)
    client.get(f"/checkout/stripe/success?session_id={job.checkout_session_id}")
    stripe_shop.set_fee(session["payment_intent"], 62)

    assert record_payment_fee(job.job_id) == "recorded"
    assert Job.objects.get(pk=job.pk).payment_fee == Decimal("0.62")


def test_banner_shows_stripe_test_mode(client, stripe_shop, settings):
    page = client.get("/")
    assert b"Stripe's test environment" in page.content
    settings.STRIPE_SECRET_KEY = "sk_live_example"
    assert b'class="test-mode"' not in client.get("/").content


def run_settings(**env):
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "SMI_")) and key != "DATABASE_URL"
    }
    environment.update(env, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'sellmyimages.settings'\n"
        "from django.conf import settings\n"
        "print(settings.SMI_PAYMENT_PROVIDER)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )


def test_provider_defaults_to_stripe_with_a_key(tmp_path):
    with_key = run_settings(SMI_DATA_DIR=str(tmp_path), STRIPE_SECRET_KEY="sk_test_x")
    without = run_settings(SMI_DATA_DIR=str(tmp_path))
    assert with_key.stdout.strip() == "stripe"
    assert without.stdout.strip() == "local"


def test_zero_decimal_currency_rejected_at_start(tmp_path):
    result = run_settings(
        SMI_DATA_DIR=str(tmp_path), STRIPE_SECRET_KEY="sk_test_x", SMI_CURRENCY="jpy"
    )
    assert result.returncode != 0
    assert "SMI_CURRENCY='jpy' does not have two decimal places" in result.stderr


def test_stripe_purchase_delivers_and_records_fee(
    client, catalog, stripe_shop, settings
):
    from tests.conftest import files_in, run_tasks
    from tests.fakes.stripe_fixtures import make_event, post_event

    created = create_job(client, catalog, email="buyer@example.com")
    job = Job.objects.get(job_id=created["job_id"])
    session = stripe_shop.complete_session(job.checkout_session_id)
    stripe_shop.set_fee(session["payment_intent"], 59)
    assert (
        post_event(
            client, make_event("checkout.session.completed", session)
        ).status_code
        == 200
    )

    run_tasks()

    job.refresh_from_db()
    assert job.status == "completed"
    assert job.payment_status == "paid"
    assert job.payment_fee == Decimal("0.59")
    [message] = files_in(settings.SMI_OUTBOX_DIR)
    assert "buyer@example.com" in message.read_text()


def test_start_up_line_names_the_payment_mode(settings):
    from sellmyimages.payments.backends import describe_payment_setup

    settings.SMI_PAYMENT_PROVIDER = "local"
    assert "local test checkout" in describe_payment_setup()
    settings.SMI_PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = "rk_test_example"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_example"
    assert (
        describe_payment_setup() == "Payments use Stripe in test mode: no money moves."
    )
    settings.STRIPE_SECRET_KEY = "sk_live_example"
    settings.STRIPE_WEBHOOK_SECRET = ""
    line = describe_payment_setup()
    assert line.startswith("Payments use Stripe in live mode.")
    assert "STRIPE_WEBHOOK_SECRET is not set" in line
