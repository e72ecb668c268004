"""POST /webhooks/stripe with real signed payloads: signatures, duplicates, every order."""

import itertools
import json
import logging
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, JobEvent
from sellmyimages.jobs.pricing import to_minor_units
from sellmyimages.notifications.models import Notification
from sellmyimages.payments.models import Dispute, Refund, StripeEvent
from tests.conftest import files_in, run_tasks
from tests.fakes.stripe_fixtures import (  # noqa: F401
    fake_stripe,
    localstripe,
    make_event,
    make_stripe_job,
    post_event,
    sign,
    stripe_shop,
)

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE = "photo_cat_chelsea_451x300.png"


@pytest.fixture
def job(catalog, stripe_shop):
    """A Stripe job awaiting payment, with its Checkout Session in the fake."""
    job = make_stripe_job(catalog(IMAGE))
    from sellmyimages.payments.backends import get_payment_backend

    session = get_payment_backend().start_checkout(job)
    job_manager.update_checkout_session(job.job_id, session.session_id)
    return Job.objects.get(pk=job.pk)


def session_object(
    job, *, status="complete", payment_status="paid", payment_intent=None
):
    return {
        "id": job.checkout_session_id,
        "object": "checkout.session",
        "mode": "payment",
        "status": status,
        "payment_status": payment_status,
        "amount_total": to_minor_units(job.customer_price),
        "currency": job.currency,
        "metadata": {"job_id": str(job.job_id)},
        "client_reference_id": str(job.job_id),
        "customer_details": {"email": "payer@example.com"},
        "payment_intent": payment_intent or f"pi_{job.job_id.hex[:14]}",
        "livemode": False,
    }


def session_event(job, event_type, **kwargs):
    if event_type == "checkout.session.expired":
        kwargs = {
            "status": "expired",
            "payment_status": "unpaid",
            "payment_intent": None,
        }
    elif event_type == "checkout.session.async_payment_failed":
        kwargs.setdefault("payment_status", "unpaid")
    return make_event(event_type, session_object(job, **kwargs))


def state(job):
    job.refresh_from_db()
    return job.status, job.payment_status


def process_job_tasks():
    return DBTaskResult.objects.filter(
        task_path="sellmyimages.upscaling.tasks.process_job"
    )


# Signatures and bodies


def test_valid_signature_processes_event(client, job):
    response = post_event(client, session_event(job, "checkout.session.completed"))
    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "processed"
    assert state(job) == ("pending", "paid")
    row = StripeEvent.objects.get()
    assert row.event_type == "checkout.session.completed"
    assert row.job_id == job.pk
    assert row.processed_at is not None


@pytest.mark.parametrize(
    "case",
    [
        "wrong_secret",
        "missing_header",
        "stale",
        "altered_body",
        "garbage_header",
        "unsigned_v0",
    ],
)
def test_bad_signature_rejected_and_nothing_changes(client, job, case):
    event = session_event(job, "checkout.session.completed")
    payload = json.dumps(event).encode()
    if case == "wrong_secret":
        response = post_event(client, payload, secret="whsec_someone_else")
    elif case == "missing_header":
        response = post_event(client, payload, signature=False)
    elif case == "stale":
        response = post_event(client, payload, timestamp=time.time() - 301)
    elif case == "altered_body":
        header = sign(payload)
        altered = payload.replace(b'"paid"', b'"paid" ', 1)
        response = post_event(client, altered, signature=header)
    elif case == "garbage_header":
        response = post_event(client, payload, signature="t=abc,v1=")
    else:
        response = post_event(
            client, payload, signature=sign(payload).replace("v1=", "v0=")
        )
    assert response.status_code == 400
    assert StripeEvent.objects.count() == 0
    assert state(job) == ("awaiting_payment", "unpaid")


def test_signed_body_that_is_not_json_rejected(client, job):
    response = post_event(client, b"not json at all")
    assert response.status_code == 400
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'{"id": "evt_1", "type": "checkout.session.completed", "created": "abc"}',
        b'{"id": "evt_2", "type": "checkout.session.completed", "created": 100000000000000000000}',
        b'{"id": "evt_3", "type": "checkout.session.completed", "created": 1, "data": "zzz"}',
        json.dumps({"id": "evt_" + "x" * 300, "type": "ping", "created": 1}).encode(),
    ],
)
def test_signed_body_of_wrong_shape_rejected(client, job, body):
    response = post_event(client, body)
    assert response.status_code == 400
    assert StripeEvent.objects.count() == 0


def test_oversized_body_refused_before_parsing(client, job):
    event = session_event(job, "checkout.session.completed")
    event["padding"] = "x" * (1024 * 1024)
    response = post_event(client, event)
    assert response.status_code == 413
    assert StripeEvent.objects.count() == 0
    assert state(job) == ("awaiting_payment", "unpaid")


def test_missing_webhook_secret_answers_503(client, job, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    response = post_event(client, session_event(job, "checkout.session.completed"))
    assert response.status_code == 503
    assert StripeEvent.objects.count() == 0


def test_get_not_allowed(client, stripe_shop):
    assert client.get("/webhooks/stripe").status_code == 405


# Duplicates and order


def test_duplicate_event_acknowledged_once(client, job):
    event = session_event(job, "checkout.session.completed")
    first = post_event(client, event)
    second = post_event(client, event)
    assert first.status_code == second.status_code == 200
    assert first.json()["duplicate"] is False
    assert second.json()["duplicate"] is True
    assert StripeEvent.objects.count() == 1
    assert JobEvent.objects.filter(job=job, event="payment_completed").count() == 1
    assert process_job_tasks().count() == 1


def test_same_payment_in_two_events_counted_once(client, job):
    post_event(client, session_event(job, "checkout.session.completed"))
    post_event(client, session_event(job, "checkout.session.async_payment_succeeded"))
    assert StripeEvent.objects.count() == 2
    assert JobEvent.objects.filter(job=job, event="payment_completed").count() == 1
    assert process_job_tasks().count() == 1


PAID = ["checkout.session.completed", "checkout.session.expired"]
ASYNC_SUCCESS = [
    "checkout.session.completed:unpaid",
    "checkout.session.async_payment_succeeded",
    "checkout.session.expired",
]
ASYNC_FAILURE = [
    "checkout.session.completed:unpaid",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
]
ORDERS = (
    [("paid", order) for order in itertools.permutations(PAID)]
    + [("async_success", order) for order in itertools.permutations(ASYNC_SUCCESS)]
    + [("async_failure", order) for order in itertools.permutations(ASYNC_FAILURE)]
)


@pytest.mark.parametrize(
    "flow,order", ORDERS, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v
)
def test_every_order_ends_in_one_state(client, job, flow, order):
    events = []
    for name in order:
        event_type, _, variant = name.partition(":")
        kwargs = {"payment_status": "unpaid"} if variant == "unpaid" else {}
        events.append(session_event(job, event_type, **kwargs))
    # Every event is delivered twice: once in order, once again at the end.
    for event in events + events:
        assert post_event(client, event).status_code == 200

    if flow == "async_failure":
        assert state(job) == ("abandoned", "failed")
        assert JobEvent.objects.filter(job=job, event="payment_completed").count() == 0
        assert process_job_tasks().count() == 0
    else:
        assert state(job) == ("pending", "paid")
        assert JobEvent.objects.filter(job=job, event="payment_completed").count() == 1
        assert process_job_tasks().count() == 1
    assert StripeEvent.objects.count() == len(events)


def test_late_expired_after_completed_changes_nothing(client, job):
    post_event(client, session_event(job, "checkout.session.completed"))
    response = post_event(client, session_event(job, "checkout.session.expired"))
    assert response.status_code == 200
    assert state(job) == ("pending", "paid")
    assert not JobEvent.objects.filter(job=job, to_status="abandoned").exists()


def test_payment_after_abandonment_revives_job(client, job):
    post_event(client, session_event(job, "checkout.session.expired"))
    assert state(job) == ("abandoned", "unpaid")
    post_event(client, session_event(job, "checkout.session.completed"))
    assert state(job) == ("pending", "paid")
    assert JobEvent.objects.filter(
        job=job, from_status="abandoned", to_status="pending"
    ).exists()


def test_unpaid_completion_takes_email_and_waits(client, catalog, stripe_shop):
    job = make_stripe_job(catalog(IMAGE), email="")
    job_manager.update_checkout_session(job.job_id, "cs_test_no_email")
    job.refresh_from_db()
    post_event(
        client,
        session_event(job, "checkout.session.completed", payment_status="unpaid"),
    )
    job.refresh_from_db()
    assert job.email == "payer@example.com"
    assert state(job) == ("awaiting_payment", "unpaid")


def test_short_payment_not_recorded(client, job):
    event = session_event(job, "checkout.session.completed")
    event["data"]["object"]["amount_total"] -= 1
    response = post_event(client, event)
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert state(job) == ("awaiting_payment", "unpaid")
    assert JobEvent.objects.filter(job=job, event="payment_amount_mismatch").exists()


# Events the shop does not act on


def test_unknown_event_type_acknowledged(client, stripe_shop):
    response = post_event(client, make_event("customer.created", {"id": "cus_1"}))
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert StripeEvent.objects.get().outcome == "ignored"


def test_unknown_job_acknowledged_and_logged(client, stripe_shop, caplog):
    event = make_event(
        "checkout.session.completed",
        {"id": "cs_test_elsewhere", "payment_status": "paid", "metadata": {}},
    )
    with caplog.at_level(
        logging.WARNING, logger="sellmyimages.payments.stripe_webhooks"
    ):
        response = post_event(client, event)
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert "event=stripe_event_unknown_job" in caplog.text
    assert "object=checkout session" in caplog.text


def test_live_event_for_test_key_ignored(client, job):
    event = session_event(job, "checkout.session.completed")
    event["livemode"] = True
    response = post_event(client, event)
    assert response.json()["outcome"] == "ignored"
    assert state(job) == ("awaiting_payment", "unpaid")


# Processing failures


def paid_job(client, job, fake):
    """Complete the job's session in the fake and deliver checkout.session.completed."""
    session = fake.complete_session(job.checkout_session_id)
    post_event(client, make_event("checkout.session.completed", session))
    job.refresh_from_db()
    assert job.payment_status == "paid"
    return session


def charge_refunded_event(job):
    charge = {
        "id": f"ch_{job.job_id.hex[:14]}",
        "object": "charge",
        "payment_intent": job.payment_intent_id,
        "amount": to_minor_units(job.customer_price),
        "refunded": True,
        "metadata": {},
    }
    return make_event("charge.refunded", charge)


def test_failed_processing_answers_500_and_runs_again(client, job, stripe_shop):
    paid_job(client, job, stripe_shop)
    stripe_shop.client().v1.refunds.create({"payment_intent": job.payment_intent_id})
    event = charge_refunded_event(job)
    stripe_shop.add_fault("GET", "/v1/refunds", status=500)

    first = post_event(client, event)
    assert first.status_code == 500
    row = StripeEvent.objects.get(event_id=event["id"])
    assert row.outcome == "failed"
    assert job.refunds.count() == 0
    assert state(job) == ("pending", "paid")

    second = post_event(client, event)
    assert second.status_code == 200
    row.refresh_from_db()
    assert row.outcome == "processed"
    assert row.attempts == 2
    # A full refund before delivery fails the job, so no image goes out.
    assert state(job) == ("failed", "refunded")


# Refunds and disputes reported by Stripe


def completed_with_token(job):
    job_manager.update_status(job.job_id, "processing", actor="test")
    job_manager.update_status(
        job.job_id, "completed", actor="test", output_path="/x.png"
    )
    return job_manager.generate_download_token(job.job_id)


def test_dashboard_full_refund_revokes_download(client, job, stripe_shop, settings):
    paid_job(client, job, stripe_shop)
    completed_with_token(job)
    stripe_shop.client().v1.refunds.create({"payment_intent": job.payment_intent_id})

    assert post_event(client, charge_refunded_event(job)).status_code == 200

    job.refresh_from_db()
    assert job.payment_status == "refunded"
    assert job.refund_amount == job.customer_price
    assert job.download_token_hash is None
    refund = job.refunds.get()
    assert refund.kind == "external"
    assert refund.status == "succeeded"
    assert refund.provider_refund_id.startswith("re_")
    run_tasks()
    assert Notification.objects.filter(job=job, kind="refund_issued").count() == 1


def test_dashboard_partial_refund_keeps_download(client, job, stripe_shop):
    paid_job(client, job, stripe_shop)
    completed_with_token(job)
    stripe_shop.client().v1.refunds.create(
        {"payment_intent": job.payment_intent_id, "amount": 10}
    )

    post_event(client, charge_refunded_event(job))
    post_event(client, charge_refunded_event(job))

    job.refresh_from_db()
    assert job.payment_status == "partially_refunded"
    assert job.refund_amount == Decimal("0.10")
    assert job.download_token_hash is not None
    assert job.refunds.count() == 1


def test_refund_failed_after_success_reverses_it(client, job, stripe_shop, settings):
    paid_job(client, job, stripe_shop)
    made = stripe_shop.client().v1.refunds.create(
        {"payment_intent": job.payment_intent_id}
    )
    post_event(client, charge_refunded_event(job))
    # A full refund before delivery fails the job, so no image goes out.
    assert state(job) == ("failed", "refunded")

    failed = made.to_dict() | {
        "status": "failed",
        "failure_reason": "expired_or_canceled_card",
    }
    assert post_event(client, make_event("refund.failed", failed)).status_code == 200
    # A stale "succeeded" report arriving afterwards changes nothing.
    late = made.to_dict() | {"status": "succeeded"}
    post_event(client, make_event("refund.updated", late, created=time.time() - 60))

    job.refresh_from_db()
    assert job.payment_status == "paid"
    assert job.refund_amount == Decimal("0")
    refund = job.refunds.get()
    assert refund.status == "failed"
    assert refund.failure_reason == "expired_or_canceled_card"
    assert JobEvent.objects.filter(job=job, event="refund_reversed").count() == 1


def test_refund_updated_records_our_refund(client, job, stripe_shop):
    paid_job(client, job, stripe_shop)
    ours = Refund.objects.create(
        job=job, kind="admin", amount=Decimal("0.25"), currency="usd", reason="goodwill"
    )
    made = stripe_shop.client().v1.refunds.create(
        {
            "payment_intent": job.payment_intent_id,
            "amount": 25,
            "metadata": {"refund_id": str(ours.id)},
        }
    )
    post_event(client, make_event("refund.updated", made.to_dict()))

    ours.refresh_from_db()
    assert ours.status == "succeeded"
    assert ours.provider_refund_id == made.id
    assert job.refunds.count() == 1
    assert state(job) == ("pending", "partially_refunded")


def test_dispute_flags_job_and_emails_admin_once(client, job, stripe_shop, settings):
    paid_job(client, job, stripe_shop)
    dispute = {
        "id": "dp_test_1",
        "object": "dispute",
        "amount": to_minor_units(job.customer_price),
        "currency": "usd",
        "payment_intent": job.payment_intent_id,
        "charge": "ch_test_1",
        "reason": "fraudulent",
        "status": "needs_response",
    }
    event = make_event("charge.dispute.created", dispute)
    post_event(client, event)
    post_event(client, event)
    post_event(client, make_event("charge.dispute.created", dispute))
    run_tasks()

    row = Dispute.objects.get()
    assert row.job_id == job.pk
    assert row.reason == "fraudulent"
    assert JobEvent.objects.filter(job=job, event="dispute_opened").count() == 1
    admin_mail = [
        path
        for path in files_in(settings.SMI_OUTBOX_DIR)
        if "Dispute opened" in path.read_text()
    ]
    assert len(admin_mail) == 1
    assert settings.SMI_ADMIN_EMAIL in admin_mail[0].read_text()


# Admin


def test_admin_lists_and_reprocesses_event(client, job):
    event = session_event(job, "checkout.session.completed")
    event["data"]["object"]["amount_total"] -= 1
    post_event(client, event)
    row = StripeEvent.objects.get()
    assert row.outcome == "ignored"
    admin = User.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(admin)

    listing = client.get("/admin/payments/stripeevent/")
    assert listing.status_code == 200
    assert event["id"].encode() in listing.content
    assert b"TEST MODE" in listing.content

    # The shop's price was fixed meanwhile: processing it again records the payment.
    Job.objects.filter(pk=job.pk).update(
        customer_price=job.customer_price - Decimal("0.01")
    )
    response = client.post(
        "/admin/payments/stripeevent/",
        {"action": "reprocess", "_selected_action": [row.pk]},
    )
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.outcome == "processed"
    assert row.attempts == 2
    assert state(job) == ("pending", "paid")
    assert (
        JobEvent.objects.get(job=job, event="payment_completed").actor == "admin:boss"
    )


def test_events_kept_with_time_received(client, job):
    before = timezone.now() - timedelta(seconds=1)
    post_event(client, session_event(job, "checkout.session.completed"))
    row = StripeEvent.objects.get()
    assert row.received_at >= before
    assert row.payload["type"] == "checkout.session.completed"


def test_event_signed_by_localstripe_accepted(live_server, stripe_shop, localstripe):
    """localstripe signs and delivers its own events; the endpoint verifies them."""
    import urllib.request

    def configure(url, events):
        body = json.dumps({"url": url, "secret": "whsec_test_smi", "events": events})
        request = urllib.request.Request(
            f"{localstripe}/_config/webhooks/smi_test",
            data=body.encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer sk_test_x",
            },
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()

    configure(f"{live_server.url}/webhooks/stripe", ["payment_intent.succeeded"])
    try:
        payment_intent = stripe_shop.create_payment(500)
        # Events of earlier tests' payments may arrive too; wait for this one.
        ours = StripeEvent.objects.filter(payload__data__object__id=payment_intent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not ours.exists():
            time.sleep(0.2)
    finally:
        # Deliver nothing more from this session-wide localstripe.
        configure("http://127.0.0.1:9/", ["no.such.event"])

    row = ours.get()
    assert row.event_type == "payment_intent.succeeded"
    assert row.outcome == "ignored"


def test_refund_before_payment_event_is_delivered_again(client, job, stripe_shop):
    session = stripe_shop.complete_session(job.checkout_session_id)
    payment_intent = session["payment_intent"]
    stripe_shop.client().v1.refunds.create({"payment_intent": payment_intent})
    charge = {"id": "ch_early", "object": "charge", "payment_intent": payment_intent}
    refunded = make_event("charge.refunded", charge)

    early = post_event(client, refunded)
    assert early.status_code == 500
    assert state(job) == ("awaiting_payment", "unpaid")

    post_event(client, make_event("checkout.session.completed", session))
    again = post_event(client, refunded)
    assert again.status_code == 200
    # A full refund before delivery fails the job, so no image goes out.
    assert state(job) == ("failed", "refunded")


def test_refund_for_unknown_payment_acknowledged(client, stripe_shop):
    charge = {"id": "ch_other", "object": "charge", "payment_intent": "pi_not_ours"}
    response = post_event(client, make_event("charge.refunded", charge))
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
