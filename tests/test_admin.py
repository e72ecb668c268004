"""The Jobs admin and the shop settings page, through Django's test client."""

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job
from sellmyimages.payments.models import Refund
from sellmyimages.shopsettings.models import ShopSettingsChange
from tests.conftest import run_tasks
from tests.factories import force_status, make_job
from tests.operator_jobs import (
    BUYER,
    CAT,
    age,
    buy,
    completed_job,
    download_tokens,
    events,
    failed_job_with_failed_refund,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/jobs/job/"
RETINA = "photo_retina_fundus_1411x1411.jpg"


def job_url(job):
    return f"/admin/jobs/job/{job.pk}/change/"


def action_url(job, action):
    return f"/admin/jobs/job/{job.pk}/actions/{action}/"


def texts(response):
    """Return the page's messages as plain strings."""
    return [str(message) for message in response.context["messages"]]


def reload(job):
    return Job.objects.get(pk=job.pk)


# The list


def test_list_shows_price_cost_and_margin(admin_client, client, catalog):
    job = completed_job(client, catalog)
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    row = next(r for r in response.context["cl"].result_list if r.pk == job.pk)
    assert row.total_cost == job.provider_cost
    assert row.margin_amount == job.customer_price - job.provider_cost
    page = response.content.decode()
    assert f"{job.customer_price} USD" in page
    margin = (job.customer_price - job.provider_cost).quantize(Decimal("0.01"))
    assert f'<td class="field-margin">{margin}</td>' in page


def test_list_margin_empty_for_unpaid(admin_client, catalog):
    job = make_job(catalog(CAT))
    response = admin_client.get(CHANGELIST)
    row = next(r for r in response.context["cl"].result_list if r.pk == job.pk)
    assert row.margin_amount is None


def test_list_sorts_by_margin(admin_client, client, catalog):
    small = completed_job(client, catalog)
    large = Job.objects.get(job_id=buy(client, catalog(CAT), resolution="8x"))
    # Column 7 of list_display is the margin; "-" sorts descending.
    response = admin_client.get(CHANGELIST, {"o": "-7"})
    paid = [r.pk for r in response.context["cl"].result_list]
    assert paid.index(large.pk) < paid.index(small.pk)
    response = admin_client.get(CHANGELIST, {"o": "7"})
    paid = [r.pk for r in response.context["cl"].result_list]
    assert paid.index(small.pk) < paid.index(large.pk)


@pytest.mark.parametrize(
    "field",
    ["job_id", "email", "checkout_session_id", "payment_intent_id"],
)
def test_search_finds_job_by_reference(admin_client, client, catalog, field):
    job = completed_job(client, catalog, buyer="findme@example.com")
    make_job(catalog(CAT), email="other@example.com")
    term = str(getattr(job, field))[:12]
    response = admin_client.get(CHANGELIST, {"q": term})
    assert [r.pk for r in response.context["cl"].result_list] == [job.pk]


def test_search_finds_provider_job_id(admin_client, catalog):
    job = make_job(catalog(CAT))
    make_job(catalog(CAT))
    job_manager.update_job(
        job.job_id, provider="upsampler", provider_job_id="ups-777-abc"
    )
    response = admin_client.get(CHANGELIST, {"q": "777-abc"})
    assert [r.pk for r in response.context["cl"].result_list] == [job.pk]


def test_filters_by_status_and_payment(admin_client, client, catalog):
    done = completed_job(client, catalog)
    unpaid = make_job(catalog(CAT))
    response = admin_client.get(CHANGELIST, {"status__exact": "completed"})
    assert [r.pk for r in response.context["cl"].result_list] == [done.pk]
    response = admin_client.get(CHANGELIST, {"payment_status__exact": "unpaid"})
    assert [r.pk for r in response.context["cl"].result_list] == [unpaid.pk]


def test_filters_by_provider_and_resolution(admin_client, client, catalog):
    done = completed_job(client, catalog)
    eight = make_job(catalog(CAT), resolution="8x")
    response = admin_client.get(CHANGELIST, {"provider": "local"})
    assert [r.pk for r in response.context["cl"].result_list] == [done.pk]
    response = admin_client.get(CHANGELIST, {"resolution": "8x"})
    assert [r.pk for r in response.context["cl"].result_list] == [eight.pk]


def test_date_range_includes_both_days(admin_client, catalog):
    old = make_job(catalog(CAT))
    new = make_job(catalog(CAT))
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    today = timezone.now().date()
    response = admin_client.get(
        CHANGELIST, {"created_from": str(today), "created_to": str(today)}
    )
    assert [r.pk for r in response.context["cl"].result_list] == [new.pk]
    before = today - timedelta(days=5)
    response = admin_client.get(CHANGELIST, {"created_to": str(before)})
    assert [r.pk for r in response.context["cl"].result_list] == [old.pk]
    page = response.content.decode()
    assert f'value="{before}"' in page


def test_date_range_rejects_bad_date(admin_client):
    response = admin_client.get(CHANGELIST, {"created_from": "31/01/2026"})
    assert response.status_code == 302
    assert "e=1" in response["Location"]


def test_stuck_filter(admin_client, client, catalog):
    stuck = make_job(catalog(CAT))
    force_status(stuck, "pending")
    fresh = make_job(catalog(CAT))
    force_status(fresh, "pending")
    age(stuck, 120)
    response = admin_client.get(CHANGELIST, {"attention": "stuck"})
    assert [r.pk for r in response.context["cl"].result_list] == [stuck.pk]


# The job page


def test_job_page_shows_timeline_and_references(admin_client, client, catalog):
    job = completed_job(client, catalog)
    response = admin_client.get(job_url(job))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="timeline"' in page
    for event in job.events.all():
        assert event.event in page
    assert "awaiting_payment &rarr; pending" in page
    assert "local_checkout" in page  # the actor of the payment
    assert "payment completed" in page  # its reason
    assert job.payment_intent_id in page
    assert job.checkout_session_id in page
    assert job.download_expires_at.strftime("%Y-%m-%d") in page
    assert "Download ready" in page  # the emails section
    for label in ("Resend download email", "Issue new download link", "Refund"):
        assert f">{label}</a>" in page
    assert ">Retry</a>" not in page


def test_job_page_cannot_be_saved(admin_client, client, catalog):
    job = completed_job(client, catalog)
    response = admin_client.post(job_url(job), {"email": "thief@example.com"})
    assert response.status_code == 405
    assert reload(job).email == BUYER
    assert b'name="_save"' not in admin_client.get(job_url(job)).content


def test_job_page_shows_failure_reason(admin_client, client, catalog, settings):
    job = failed_job_with_failed_refund(client, catalog, settings)
    page = admin_client.get(job_url(job)).content.decode()
    assert "source_missing" in page
    assert 'id="refunds"' in page
    assert ">Retry</a>" in page


# Retry


def test_retry_asks_for_confirmation(admin_client, client, catalog, settings):
    job = failed_job_with_failed_refund(client, catalog, settings)
    response = admin_client.get(action_url(job, "retry"))
    assert response.status_code == 200
    assert b'id="confirm"' in response.content
    assert reload(job).status == "failed"


def test_retry_failed_job_completes_it(admin_client, client, catalog, settings):
    job = failed_job_with_failed_refund(client, catalog, settings)
    response = admin_client.post(
        action_url(job, "retry"), {"reason": "source restored"}, follow=True
    )
    assert any("moved back to pending" in text for text in texts(response))
    job = reload(job)
    assert job.status == "pending"
    assert job.attempt_count == 0
    [retried] = events(job, "retried")
    assert retried.actor == "admin:admin"
    assert retried.reason == "source restored"
    assert (retried.from_status, retried.to_status) == ("failed", "pending")

    run_tasks()

    job = reload(job)
    assert job.status == "completed"
    assert job.payment_status == "paid"
    assert (job.output_width, job.output_height) == (1804, 1200)
    assert len(download_tokens(settings)) == 1


def test_retry_rejected_after_refund(admin_client, client, catalog, settings):
    name = catalog(CAT)
    job_id = buy(client, name)
    (Path(settings.SMI_CATALOG_DIR) / name).unlink()
    run_tasks()
    job = Job.objects.get(job_id=job_id)
    assert job.payment_status == "refunded"

    response = admin_client.post(action_url(job, "retry"), {"reason": ""}, follow=True)

    assert any("its payment was refunded" in text for text in texts(response))
    assert reload(job).status == "failed"
    assert events(job, "retried") == []


def test_retry_rejected_before_refund_attempt(admin_client, client, catalog, settings):
    name = catalog(CAT)
    job = Job.objects.get(job_id=buy(client, name))
    force_status(job, "processing")
    job_manager.mark_failed(job.job_id, "engine_crashed")

    response = admin_client.post(action_url(job, "retry"), {}, follow=True)

    assert any("automatic refund has not been attempted" in t for t in texts(response))
    assert reload(job).status == "failed"


def test_retry_rejected_for_unpaid(admin_client, catalog):
    job = make_job(catalog(CAT))
    job_manager.mark_failed(job.job_id, "checkout_broken")
    response = admin_client.post(action_url(job, "retry"), {}, follow=True)
    assert any("'unpaid'" in text for text in texts(response))
    assert reload(job).status == "failed"


def test_retry_stuck_processing_reruns(admin_client, client, catalog, settings):
    job = Job.objects.get(job_id=buy(client, catalog(CAT)))
    # A worker claimed the job and died: processing, attempt 1, no task left.
    job_manager.update_status(
        job.job_id, "processing", actor="worker", provider="local", attempt_count=1
    )
    from django_tasks_db.models import DBTaskResult

    DBTaskResult.objects.all().delete()
    age(job, 45)

    response = admin_client.post(action_url(job, "retry"), {}, follow=True)

    assert any("new attempt number" in text for text in texts(response))
    job = reload(job)
    assert job.status == "processing"
    assert job.attempt_count == 2
    run_tasks()
    assert reload(job).status == "completed"


def test_retry_rejected_when_not_stuck(admin_client, client, catalog):
    job = Job.objects.get(job_id=buy(client, catalog(CAT)))
    job_manager.update_status(job.job_id, "processing", actor="worker", attempt_count=1)
    response = admin_client.post(action_url(job, "retry"), {}, follow=True)
    assert any("counts as stuck only after 30 minutes" in t for t in texts(response))
    job = reload(job)
    assert job.attempt_count == 1
    assert events(job, "retried") == []


def test_retry_stuck_pending_requeues(admin_client, client, catalog):
    job = Job.objects.get(job_id=buy(client, catalog(CAT)))
    from django_tasks_db.models import DBTaskResult

    # The task enqueued after payment was lost.
    DBTaskResult.objects.all().delete()
    age(job, 45)
    response = admin_client.post(action_url(job, "retry"), {}, follow=True)
    assert any("enqueued again" in text for text in texts(response))
    run_tasks()
    assert reload(job).status == "completed"


# Refund


def test_partial_refund_with_reason(admin_client, client, catalog):
    job = completed_job(client, catalog)
    response = admin_client.post(
        action_url(job, "refund"),
        {"amount": "0.20", "reason": "colour cast"},
        follow=True,
    )
    assert any("refund of 0.20 USD is succeeded" in t for t in texts(response))
    job = reload(job)
    assert job.payment_status == "partially_refunded"
    assert job.refund_amount == Decimal("0.20")
    [refund] = Refund.objects.filter(job=job)
    assert refund.kind == "admin"
    assert refund.actor == "admin:admin"
    assert refund.reason == "colour cast"
    [requested] = events(job, "refund_requested")
    assert requested.actor == "admin:admin"
    assert job.download_token_hash is not None


def test_full_refund_revokes_download(admin_client, client, catalog, settings):
    job = completed_job(client, catalog)
    [token] = download_tokens(settings)
    admin_client.post(action_url(job, "refund"), {"reason": "customer asked"})
    job = reload(job)
    assert job.payment_status == "refunded"
    assert job.refund_amount == job.customer_price
    assert client.get(f"/downloads/{token}").status_code == 404


def test_refund_over_price_rejected(admin_client, client, catalog):
    job = completed_job(client, catalog)
    response = admin_client.post(
        action_url(job, "refund"), {"amount": "999.00", "reason": "typo"}, follow=True
    )
    assert any("refundable" in text for text in texts(response))
    assert reload(job).payment_status == "paid"
    assert not Refund.objects.filter(job=job).exists()


def test_refund_needs_reason(admin_client, client, catalog):
    job = completed_job(client, catalog)
    response = admin_client.post(
        action_url(job, "refund"), {"amount": "1.00", "reason": ""}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    assert not Refund.objects.filter(job=job).exists()


# Download links


def test_resend_emails_new_link(admin_client, client, catalog, settings):
    job = completed_job(client, catalog)
    [first] = download_tokens(settings)
    response = admin_client.post(action_url(job, "resend"), follow=True)
    assert any("download email sent" in text for text in texts(response))
    tokens = download_tokens(settings)
    assert len(tokens) == 2
    assert client.get(f"/downloads/{first}").status_code == 404
    assert client.get(f"/downloads/{tokens[1]}").status_code == 200
    issued = events(reload(job), "download_token_issued")
    assert issued[-1].actor == "admin:admin"


def test_reissue_shows_link_once(admin_client, client, catalog, settings):
    job = completed_job(client, catalog)
    [emailed] = download_tokens(settings)
    response = admin_client.post(action_url(job, "reissue"))
    assert response.status_code == 200
    token = re.search(r"/downloads/([0-9a-f]{64})", response.content.decode()).group(1)
    assert client.get(f"/downloads/{emailed}").status_code == 404
    assert client.get(f"/downloads/{token}").status_code == 200
    # Not emailed, and not kept in the session as a message.
    assert len(download_tokens(settings)) == 1
    from django.contrib.sessions.models import Session

    for session in Session.objects.all():
        assert token not in str(session.get_decoded())


def test_extend_revives_expired_link(admin_client, client, catalog, settings):
    job = completed_job(client, catalog)
    [token] = download_tokens(settings)
    job_manager.update_job(
        job.job_id, download_expires_at=timezone.now() - timedelta(hours=1)
    )
    assert client.get(f"/downloads/{token}").status_code == 410

    admin_client.post(action_url(job, "extend"), {"hours": "48"})

    job = reload(job)
    remaining = job.download_expires_at - timezone.now()
    assert timedelta(hours=47) < remaining <= timedelta(hours=48)
    assert client.get(f"/downloads/{token}").status_code == 200
    [extended] = events(job, "download_expiry_extended")
    assert extended.actor == "admin:admin"
    assert extended.data["hours"] == 48


def test_extend_rejects_zero_hours(admin_client, client, catalog):
    job = completed_job(client, catalog)
    expires_at = job.download_expires_at
    response = admin_client.post(action_url(job, "extend"), {"hours": "0"})
    assert response.context["form"].errors["hours"]
    assert reload(job).download_expires_at == expires_at


# Mark failed


def test_mark_failed_refunds_paid_job(admin_client, client, catalog, settings):
    job = Job.objects.get(job_id=buy(client, catalog(CAT)))
    admin_client.post(action_url(job, "fail"), {"reason": "customer sent wrong image"})
    job = reload(job)
    assert job.status == "failed"
    assert job.failure_code == "failed_by_operator"
    assert job.failure_detail == "customer sent wrong image"
    [requested] = events(job, "failure_requested")
    assert requested.actor == "admin:admin"
    assert requested.reason == "customer sent wrong image"
    run_tasks()
    assert reload(job).payment_status == "refunded"


def test_mark_failed_needs_reason(admin_client, catalog):
    job = make_job(catalog(CAT))
    response = admin_client.post(action_url(job, "fail"), {"reason": ""})
    assert response.context["form"].errors["reason"]
    assert reload(job).status == "awaiting_payment"


def test_mark_failed_rejected_for_completed(admin_client, client, catalog):
    job = completed_job(client, catalog)
    response = admin_client.post(action_url(job, "fail"), {"reason": "x"}, follow=True)
    assert any("Cannot fail job" in text for text in texts(response))
    assert reload(job).status == "completed"


# Bulk actions


def bulk(admin_client, action, jobs, **fields):
    data = {"action": action, "_selected_action": [job.pk for job in jobs], **fields}
    return admin_client.post(CHANGELIST, data, follow=True)


def test_bulk_retry_confirms_then_runs(admin_client, client, catalog, settings):
    first = failed_job_with_failed_refund(client, catalog, settings)
    second = failed_job_with_failed_refund(client, catalog, settings)

    confirmation = bulk(admin_client, "bulk_retry", [first, second])
    assert confirmation.templates[0].name == "admin/jobs/job/action_confirmation.html"
    assert str(first.job_id).encode() in confirmation.content
    assert reload(first).status == "failed"

    done = bulk(admin_client, "bulk_retry", [first, second], post="yes", reason="bulk")
    assert any("done for 2 jobs" in text for text in texts(done))
    assert reload(first).status == "pending"
    assert reload(second).status == "pending"
    assert events(reload(second), "retried")[0].actor == "admin:admin"


def test_bulk_extend_reports_each_failure(admin_client, client, catalog):
    done = completed_job(client, catalog)
    unpaid = make_job(catalog(CAT))
    before = done.download_expires_at
    response = bulk(admin_client, "bulk_extend", [done, unpaid], post="yes", hours="5")
    messages = texts(response)
    assert any("download link now expires" in text for text in messages)
    assert any(
        str(unpaid.job_id) in text and "not completed" in text for text in messages
    )
    assert reload(done).download_expires_at == before + timedelta(hours=5)


def test_bulk_resend(admin_client, client, catalog, settings):
    first = completed_job(client, catalog, buyer="one@example.com")
    second = completed_job(client, catalog, buyer="two@example.com")
    bulk(admin_client, "bulk_resend", [first, second], post="yes")
    assert len(download_tokens(settings, "one@example.com")) == 2
    assert len(download_tokens(settings, "two@example.com")) == 2


def test_actions_need_change_permission(client, catalog, settings):
    job = make_job(catalog(CAT))
    User.objects.create_user("viewer", password="pw", is_staff=True)
    client.login(username="viewer", password="pw")
    response = client.post(action_url(job, "fail"), {"reason": "nope"})
    assert response.status_code == 403
    assert reload(job).status == "awaiting_payment"


# Shop settings


SETTINGS_PAGE = "/admin/shopsettings/shopsettings/1/change/"
SETTINGS_FORM = {
    "markup_percentage": "",
    "download_expiry_hours": "",
    "reminder_hours": "",
    "abandon_after_hours": "",
    "output_retention_hours": "",
    "failed_retention_hours": "",
    "abandoned_retention_hours": "",
    "resolutions": "",
}


def quote_prices(client, name):
    response = client.post(
        "/api/v1/quotes", {"catalog_image": name}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    return {
        quote["resolution"]: Decimal(quote["price"])
        for quote in response.json()["quotes"]
    }


def test_settings_list_opens_the_form(admin_client):
    response = admin_client.get("/admin/shopsettings/shopsettings/")
    assert response.status_code == 302
    assert response["Location"].endswith(SETTINGS_PAGE)
    page = admin_client.get(SETTINGS_PAGE).content.decode()
    assert "SMI_MARKUP_PERCENT" in page
    assert "environment's value: 500 (SMI_MARKUP_PERCENT)" in page


def test_markup_change_audited_and_applied(admin_client, client, catalog):
    name = catalog(RETINA)
    existing = make_job(name)
    before = quote_prices(client, name)

    response = admin_client.post(
        SETTINGS_PAGE, {**SETTINGS_FORM, "markup_percentage": "1000"}
    )
    assert response.status_code == 302

    [change] = ShopSettingsChange.objects.all()
    assert change.actor == "admin:admin"
    assert change.field == "markup_percentage"
    assert change.old_value == "environment default (500)"
    assert change.new_value == "1000.00"
    after = quote_prices(client, name)
    # 4x is 5644 x 5644 px, 8 credits at 0.04: 0.32 plus 500% is 1.92,
    # plus 1000% is 3.52.
    assert before["4x"] == Decimal("1.92")
    assert after["4x"] == Decimal("3.52")
    new_job = make_job(name)
    assert new_job.customer_price == Decimal("3.52")
    assert new_job.markup_percentage == Decimal("1000")
    assert reload(existing).customer_price == Decimal("1.92")


def test_clearing_a_setting_restores_default(admin_client, client, catalog):
    name = catalog(RETINA)
    admin_client.post(SETTINGS_PAGE, {**SETTINGS_FORM, "markup_percentage": "1000"})
    assert quote_prices(client, name)["4x"] == Decimal("3.52")
    admin_client.post(SETTINGS_PAGE, SETTINGS_FORM)
    assert quote_prices(client, name)["4x"] == Decimal("1.92")
    latest = ShopSettingsChange.objects.first()
    assert latest.old_value == "1000.00"
    assert latest.new_value == "environment default (500)"


def test_unchanged_save_writes_no_audit(admin_client):
    admin_client.post(SETTINGS_PAGE, {**SETTINGS_FORM, "reminder_hours": "3"})
    admin_client.post(SETTINGS_PAGE, {**SETTINGS_FORM, "reminder_hours": "3"})
    assert ShopSettingsChange.objects.count() == 1


def test_resolutions_override_limits_offer(admin_client, client, catalog):
    name = catalog(CAT)
    admin_client.post(SETTINGS_PAGE, {**SETTINGS_FORM, "resolutions": "2x, 4x"})
    assert sorted(quote_prices(client, name)) == ["2x", "4x"]
    response = client.post(
        "/api/v1/jobs",
        {"catalog_image": name, "resolution": "8x"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert make_job(name, resolution="2x").resolution == "2x"


@pytest.mark.parametrize(
    "field, value",
    [
        ("resolutions", "4x, huge"),
        ("resolutions", "4x, 4x"),
        ("resolutions", " , "),
        ("markup_percentage", "-5"),
        ("download_expiry_hours", "0"),
        ("reminder_hours", "30"),  # not shorter than the 24-hour expiry
    ],
)
def test_invalid_setting_rejected(admin_client, field, value):
    response = admin_client.post(SETTINGS_PAGE, {**SETTINGS_FORM, field: value})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field]
    assert not ShopSettingsChange.objects.exists()


def test_expiry_setting_applies_to_new_links(admin_client, client, catalog):
    admin_client.post(SETTINGS_PAGE, {**SETTINGS_FORM, "download_expiry_hours": "72"})
    job = completed_job(client, catalog)
    remaining = job.download_expires_at - timezone.now()
    assert timedelta(hours=71) < remaining <= timedelta(hours=72)


def test_settings_not_deletable(admin_client):
    admin_client.get("/admin/shopsettings/shopsettings/")
    response = admin_client.post(
        "/admin/shopsettings/shopsettings/1/delete/", {"post": "yes"}
    )
    assert response.status_code == 403
