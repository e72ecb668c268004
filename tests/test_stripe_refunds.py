"""Refunds against localstripe: exactly once, retried, reconciled, and across a crash.

localstripe ignores the Idempotency-Key header and refunds an already
refunded payment again, so every test counts the refunds it holds for the
payment: any second request of ours would show up there.
"""

import json
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, JobEvent
from sellmyimages.jobs.pricing import to_minor_units
from sellmyimages.notifications.models import Notification
from sellmyimages.payments.models import Refund
from sellmyimages.payments.service import refund_job
from sellmyimages.payments.tasks import refund_failed_job
from tests.conftest import files_in, image_file, run_tasks
from tests.fakes.stripe_fixtures import (  # noqa: F401
    REPO,
    fake_stripe,
    localstripe,
    make_event,
    make_stripe_job,
    post_event,
    stripe_env,
    stripe_shop,
)

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE = "photo_cat_chelsea_451x300.png"


@pytest.fixture
def paid_job(catalog, stripe_shop):
    """A Stripe job paid with a real localstripe payment intent."""
    job = make_stripe_job(catalog(IMAGE))
    payment_intent = stripe_shop.create_payment(
        to_minor_units(job.customer_price), metadata={"job_id": str(job.job_id)}
    )
    job_manager.mark_payment_completed(job.job_id, payment_intent, actor="test")
    return Job.objects.get(pk=job.pk)


def fail_job(job):
    job_manager.mark_failed(job.job_id, "engine_crashed", detail="test", actor="test")


def make_due():
    """Let retries scheduled for later run now, as if their delay had passed."""
    DBTaskResult.objects.filter(status="READY").update(run_after=timezone.now())


def admin_emails(settings, subject_part):
    return [
        path
        for path in files_in(settings.SMI_OUTBOX_DIR)
        if subject_part in path.read_text()
    ]


def test_failed_job_refunded_exactly_once(paid_job, stripe_shop, settings, client):
    fail_job(paid_job)
    run_tasks()
    # A duplicate task and duplicate webhooks for the refund change nothing.
    refund_failed_job.enqueue(str(paid_job.job_id))
    run_tasks()
    [made] = stripe_shop.refunds_for(paid_job.payment_intent_id)
    post_event(client, make_event("refund.updated", made))
    post_event(client, make_event("refund.updated", made))

    assert len(stripe_shop.refunds_for(paid_job.payment_intent_id)) == 1
    job = Job.objects.get(pk=paid_job.pk)
    assert job.payment_status == "refunded"
    assert job.refund_amount == job.customer_price
    refund = job.refunds.get()
    assert refund.kind == "automatic"
    assert refund.provider_refund_id == made["id"]
    assert refund.amount == job.customer_price
    assert refund.reason == "engine_crashed"
    assert made["amount"] == to_minor_units(job.customer_price)
    assert made["metadata"]["refund_id"] == str(refund.id)
    [request] = stripe_shop.requests_to("POST", "/v1/refunds")
    assert request.headers["Idempotency-Key"] == str(refund.id)
    assert (
        Notification.objects.filter(
            job=job, kind="refund_issued", sent_at__isnull=False
        ).count()
        == 1
    )
    customer_mail = [
        p
        for p in files_in(settings.SMI_OUTBOX_DIR)
        if "buyer@example.com" in p.read_text()
    ]
    assert len(customer_mail) == 1


def test_transient_failure_retried_with_backoff(paid_job, stripe_shop):
    stripe_shop.add_fault("POST", "/v1/refunds", status=503, times=2)
    fail_job(paid_job)
    run_tasks()
    refund = Refund.objects.get(job=paid_job)
    assert refund.status == "requested"
    assert refund.attempts == 1
    retry = (
        DBTaskResult.objects.filter(
            task_path="sellmyimages.payments.tasks.send_refund_attempt", status="READY"
        )
        .order_by("run_after")
        .first()
    )
    assert retry.run_after > timezone.now() + timezone.timedelta(seconds=30)

    for _ in range(2):
        make_due()
        run_tasks()

    refund.refresh_from_db()
    assert refund.status == "succeeded"
    assert refund.attempts == 3
    assert len(stripe_shop.refunds_for(paid_job.payment_intent_id)) == 1
    assert (
        JobEvent.objects.filter(job=paid_job, event="refund_retry_scheduled").count()
        == 2
    )
    assert Job.objects.get(pk=paid_job.pk).payment_status == "refunded"


def test_last_attempt_failure_emails_admin(paid_job, stripe_shop, settings):
    settings.SMI_REFUND_MAX_ATTEMPTS = 2
    stripe_shop.add_fault("POST", "/v1/refunds", status=503, times=10)
    fail_job(paid_job)
    for _ in range(4):
        make_due()
        run_tasks()

    refund = Refund.objects.get(job=paid_job)
    assert refund.status == "failed"
    assert refund.attempts == 2
    assert "The fake Stripe failed this request." in refund.last_error
    assert len(stripe_shop.requests_to("POST", "/v1/refunds")) == 2
    assert stripe_shop.refunds_for(paid_job.payment_intent_id) == []
    assert JobEvent.objects.filter(job=paid_job, event="refund_failed").count() == 1
    assert len(admin_emails(settings, "Refund of")) == 1
    assert Job.objects.get(pk=paid_job.pk).payment_status == "paid"


def test_lost_answer_does_not_refund_twice(paid_job, stripe_shop):
    stripe_shop.add_fault("POST", "/v1/refunds", action="lose_answer")
    fail_job(paid_job)
    run_tasks()
    assert len(stripe_shop.refunds_for(paid_job.payment_intent_id)) == 1
    assert Refund.objects.get(job=paid_job).status == "requested"

    make_due()
    run_tasks()

    assert len(stripe_shop.refunds_for(paid_job.payment_intent_id)) == 1
    assert len(stripe_shop.requests_to("POST", "/v1/refunds")) == 1
    refund = Refund.objects.get(job=paid_job)
    assert refund.status == "succeeded"
    assert refund.attempts == 2


def test_already_refunded_charge_reconciled(paid_job, stripe_shop, settings):
    made = stripe_shop.client().v1.refunds.create(
        {"payment_intent": paid_job.payment_intent_id}
    )
    stripe_shop.add_fault(
        "POST",
        "/v1/refunds",
        status=400,
        error={
            "type": "invalid_request_error",
            "code": "charge_already_refunded",
            "message": "Charge has already been refunded.",
        },
    )
    fail_job(paid_job)
    run_tasks()

    job = Job.objects.get(pk=paid_job.pk)
    assert job.payment_status == "refunded"
    ours = job.refunds.get(kind="automatic")
    assert ours.status == "canceled"
    external = job.refunds.get(kind="external")
    assert external.provider_refund_id == made.id
    assert external.status == "succeeded"
    assert len(stripe_shop.refunds_for(paid_job.payment_intent_id)) == 1
    assert DBTaskResult.objects.filter(
        task_path="sellmyimages.payments.tasks.send_refund_attempt",
        status="READY",
        args_kwargs__args__1=2,
    ).exists()  # only the fallback, which will find the refund settled
    make_due()
    run_tasks()
    assert len(stripe_shop.requests_to("POST", "/v1/refunds")) == 1
    assert admin_emails(settings, "Refund of") == []


def test_disputed_charge_ends_retrying(paid_job, stripe_shop, settings):
    stripe_shop.add_fault(
        "POST",
        "/v1/refunds",
        status=400,
        times=10,
        error={
            "type": "invalid_request_error",
            "code": "charge_disputed",
            "message": "Charge has been disputed.",
        },
    )
    fail_job(paid_job)
    for _ in range(3):
        make_due()
        run_tasks()

    refund = Refund.objects.get(job=paid_job)
    assert refund.status == "failed"
    assert len(stripe_shop.requests_to("POST", "/v1/refunds")) == 1
    assert JobEvent.objects.filter(
        job=paid_job, event="refund_blocked_by_dispute"
    ).exists()
    assert len(admin_emails(settings, "Refund of")) == 1


def test_admin_partial_refund_keeps_download(paid_job, stripe_shop):
    job_manager.update_status(paid_job.job_id, "processing", actor="test")
    job_manager.update_status(
        paid_job.job_id, "completed", actor="test", output_path="/x.png"
    )
    job_manager.generate_download_token(paid_job.job_id)

    refund = refund_job(
        paid_job.job_id,
        amount=Decimal("0.20"),
        reason="late delivery",
        kind="admin",
        actor="admin:boss",
    )

    assert refund.status == "succeeded"
    [made] = stripe_shop.refunds_for(paid_job.payment_intent_id)
    assert made["amount"] == 20
    job = Job.objects.get(pk=paid_job.pk)
    assert job.payment_status == "partially_refunded"
    assert job.refund_amount == Decimal("0.20")
    assert job.download_token_hash is not None
    requested = JobEvent.objects.get(job=job, event="refund_requested")
    assert requested.actor == "admin:boss"
    assert requested.reason == "late delivery"


def test_admin_refund_cannot_exceed_what_is_left(paid_job, stripe_shop):
    from sellmyimages.jobs.exceptions import JobValidationError

    refund_job(
        paid_job.job_id,
        amount=Decimal("0.20"),
        reason="goodwill",
        kind="admin",
        actor="admin:boss",
    )
    with pytest.raises(JobValidationError, match="refundable"):
        refund_job(
            paid_job.job_id,
            amount=paid_job.customer_price,
            reason="again",
            kind="admin",
            actor="admin:boss",
        )
    assert len(stripe_shop.refunds_for(paid_job.payment_intent_id)) == 1


# A worker killed mid-request, in processes of their own


def shop_python(env, code):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


SEED = """
from sellmyimages.catalog.images import inspect_image
from sellmyimages.jobs.manager import job_manager
info = inspect_image({image!r})
job = job_manager.create_job(
    resolution="4x", source_kind="catalog", source_ref="cat.png", source_path=info.path,
    source_width=info.width, source_height=info.height, source_format=info.format,
    email="buyer@example.com", payment_provider="stripe",
)
print(job.job_id, job.customer_price)
"""

PAY_AND_FAIL = """
from sellmyimages.jobs.manager import job_manager
job_manager.mark_payment_completed({job_id!r}, {payment_intent!r}, actor="test")
job_manager.mark_failed({job_id!r}, "engine_crashed", actor="test")
"""

REPORT = """
import json
from sellmyimages.jobs.models import Job
job = Job.objects.get(job_id={job_id!r})
print(json.dumps({{
    "payment_status": job.payment_status,
    "refunds": [[r.status, r.attempts, r.provider_refund_id] for r in job.refunds.all()],
}}))
"""


def test_worker_killed_mid_refund_refunds_once(fake_stripe, tmp_path):
    env = stripe_env(fake_stripe, tmp_path / "shop", SMI_REFUND_LEASE_SECONDS="2")
    subprocess.run(
        [sys.executable, "-m", "sellmyimages.cli", "manage", "migrate", "-v", "0"],
        env=env,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    job_id, price = shop_python(env, SEED.format(image=str(image_file(IMAGE)))).split()
    payment_intent = fake_stripe.create_payment(to_minor_units(Decimal(price)))
    shop_python(env, PAY_AND_FAIL.format(job_id=job_id, payment_intent=payment_intent))
    worker_command = [
        sys.executable,
        "-m",
        "sellmyimages.cli",
        "worker",
        "--interval",
        "0.2",
    ]

    worker = subprocess.Popen(
        worker_command, env=env, cwd=REPO, stderr=subprocess.DEVNULL
    )
    fake_stripe.add_fault("POST", "/v1/refunds", action="kill", pid=worker.pid)
    assert worker.wait(timeout=60) == -9
    # The refund reached Stripe, but the worker died before storing the response.
    assert len(fake_stripe.refunds_for(payment_intent)) == 1
    report = json.loads(shop_python(env, REPORT.format(job_id=job_id)))
    assert report["refunds"] == [["requested", 1, None]]

    restarted = subprocess.Popen(
        worker_command, env=env, cwd=REPO, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            report = json.loads(shop_python(env, REPORT.format(job_id=job_id)))
            if report["payment_status"] == "refunded":
                break
            time.sleep(0.5)
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)

    refunds = fake_stripe.refunds_for(payment_intent)
    assert len(refunds) == 1
    assert report["payment_status"] == "refunded"
    assert report["refunds"] == [["succeeded", 2, refunds[0]["id"]]]
    assert len(fake_stripe.requests_to("POST", "/v1/refunds")) == 1


def test_admin_sends_failed_refund_again(paid_job, stripe_shop, settings, client):
    from django.contrib.auth.models import User

    settings.SMI_REFUND_MAX_ATTEMPTS = 1
    stripe_shop.add_fault("POST", "/v1/refunds", status=503)
    fail_job(paid_job)
    run_tasks()
    refund = Refund.objects.get(job=paid_job)
    assert refund.status == "failed"

    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw"))
    listing = client.get("/admin/payments/refund/")
    assert str(refund.id).encode() in listing.content
    response = client.post(
        "/admin/payments/refund/",
        {"action": "send_again", "_selected_action": [refund.pk]},
    )
    assert response.status_code == 302
    run_tasks()

    refund.refresh_from_db()
    assert refund.status == "succeeded"
    assert len(stripe_shop.refunds_for(paid_job.payment_intent_id)) == 1
    assert Job.objects.get(pk=paid_job.pk).payment_status == "refunded"
    retried = JobEvent.objects.get(job=paid_job, event="refund_retry_requested")
    assert retried.actor == "admin:boss"
