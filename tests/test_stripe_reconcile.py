"""`smi payments reconcile`: repairs what lost webhooks left behind, and only once."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from django.utils import timezone

from sellmyimages.cli import main
from sellmyimages.jobs.models import Job, JobEvent
from sellmyimages.payments.models import Refund
from tests.fakes.stripe_fixtures import (  # noqa: F401
    fake_stripe,
    localstripe,
    stripe_shop,
)

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE = "photo_cat_chelsea_451x300.png"


def create_job(client, catalog):
    response = client.post(
        "/api/v1/jobs",
        {"catalog_image": catalog(IMAGE), "resolution": "4x"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    return Job.objects.get(job_id=response.json()["job_id"])


def reconcile(*args):
    result = CliRunner().invoke(main, ["payments", "reconcile", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def reconcile_json(*args):
    return json.loads(reconcile("--json", *args))


def test_lost_payment_webhook_repaired_once(client, catalog, stripe_shop):
    job = create_job(client, catalog)
    session = stripe_shop.complete_session(
        job.checkout_session_id, email="payer@example.com"
    )

    output = reconcile()
    assert "payment recorded" in output
    assert "fee 0.00 recorded" in output
    assert "2 checked, 2 changed." in output
    job.refresh_from_db()
    assert (job.status, job.payment_status) == ("pending", "paid")
    assert job.payment_intent_id == session["payment_intent"]
    assert job.payment_fee == Decimal("0.00")

    second = reconcile_json()
    assert [f for f in second if f["changed"]] == []
    assert JobEvent.objects.filter(job=job, event="payment_completed").count() == 1
    assert JobEvent.objects.get(job=job, event="payment_completed").actor == "reconcile"


def test_dry_run_changes_nothing(client, catalog, stripe_shop):
    job = create_job(client, catalog)
    stripe_shop.complete_session(job.checkout_session_id)

    output = reconcile("--dry-run")
    assert "would record the payment" in output
    job.refresh_from_db()
    assert job.payment_status == "unpaid"


def test_lost_expiry_abandons_job(client, catalog, stripe_shop):
    job = create_job(client, catalog)
    open_job = create_job(client, catalog)
    stripe_shop.expire_session(job.checkout_session_id)

    findings = {f["job_id"]: f for f in reconcile_json()}
    assert findings[str(job.job_id)]["action"] == "job abandoned"
    assert findings[str(open_job.job_id)]["action"] == "none"
    job.refresh_from_db()
    open_job.refresh_from_db()
    assert job.status == "abandoned"
    assert open_job.status == "awaiting_payment"


def test_lost_refund_webhook_recorded(client, catalog, stripe_shop):
    job = create_job(client, catalog)
    stripe_shop.complete_session(job.checkout_session_id)
    reconcile()
    job.refresh_from_db()
    stripe_shop.client().v1.refunds.create(
        {"payment_intent": job.payment_intent_id, "amount": 30}
    )

    findings = reconcile_json()
    [payment] = [f for f in findings if f["kind"] == "payment"]
    assert payment["action"] == "refunds recorded"
    job.refresh_from_db()
    assert job.payment_status == "partially_refunded"
    assert job.refund_amount == Decimal("0.30")
    assert job.refunds.get().kind == "external"
    assert [f for f in reconcile_json() if f["changed"]] == []


def test_stuck_refund_found_at_stripe(client, catalog, stripe_shop):
    job = create_job(client, catalog)
    stripe_shop.complete_session(job.checkout_session_id)
    reconcile()
    job.refresh_from_db()
    # A worker sent this refund and died before storing Stripe's response.
    refund = Refund.objects.create(
        job=job,
        kind="admin",
        amount=Decimal("0.40"),
        currency="usd",
        reason="goodwill",
        attempts=1,
    )
    stripe_shop.client().v1.refunds.create(
        {
            "payment_intent": job.payment_intent_id,
            "amount": 40,
            "metadata": {"refund_id": str(refund.id)},
        }
    )

    findings = reconcile_json()
    [found] = [f for f in findings if f["kind"] == "refund"]
    assert found["action"] == "recorded succeeded"
    refund.refresh_from_db()
    assert refund.status == "succeeded"
    assert job.refunds.count() == 1
    assert len(stripe_shop.refunds_for(job.payment_intent_id)) == 1


def test_pending_refund_updated_from_stripe(client, catalog, stripe_shop):
    job = create_job(client, catalog)
    stripe_shop.complete_session(job.checkout_session_id)
    reconcile()
    job.refresh_from_db()
    made = stripe_shop.client().v1.refunds.create(
        {"payment_intent": job.payment_intent_id, "amount": 40}
    )
    # Recorded as pending from an earlier response; its "succeeded" event was lost.
    refund = Refund.objects.create(
        job=job,
        kind="admin",
        amount=Decimal("0.40"),
        currency="usd",
        reason="goodwill",
        status="pending",
        provider_refund_id=made.id,
        attempts=1,
    )

    [found] = [f for f in reconcile_json() if f["kind"] == "refund"]
    assert found["action"] == "recorded succeeded"
    refund.refresh_from_db()
    assert refund.status == "succeeded"


def test_unsent_refund_rescheduled_after_lease(client, catalog, stripe_shop, settings):
    job = create_job(client, catalog)
    stripe_shop.complete_session(job.checkout_session_id)
    reconcile()
    refund = Refund.objects.create(
        job=job, kind="admin", amount=Decimal("0.40"), currency="usd", reason="goodwill"
    )
    Refund.objects.filter(pk=refund.pk).update(
        updated_at=timezone.now()
        - timedelta(seconds=settings.SMI_REFUND_LEASE_SECONDS + 1)
    )

    [found] = [f for f in reconcile_json() if f["kind"] == "refund"]
    assert found["action"] == "attempt 1 scheduled"
    from tests.conftest import run_tasks

    run_tasks()
    refund.refresh_from_db()
    assert refund.status == "succeeded"


def test_reconcile_needs_stripe(settings):
    settings.SMI_PAYMENT_PROVIDER = "local"
    result = CliRunner().invoke(main, ["payments", "reconcile"])
    assert result.exit_code == 2
    assert "needs Stripe" in result.output
