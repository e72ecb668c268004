"""The customer's way back: a new link for an expired one, from the order page."""

import os
from datetime import timedelta

import pytest
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job
from tests.operator_jobs import BUYER, completed_job, download_tokens, events

pytestmark = pytest.mark.django_db(transaction=True)


def expire(job, hours_ago=1):
    job_manager.update_job(
        job.job_id, download_expires_at=timezone.now() - timedelta(hours=hours_ago)
    )


def order_page(client, job):
    return client.get(f"/orders/{job.job_id}/")


def ask_for_link(client, job, **extra):
    return client.post(f"/orders/{job.job_id}/new-link", extra, follow=True)


def notices(response):
    return [str(message) for message in response.context["messages"]]


def test_expired_order_offers_new_link(client, catalog):
    job = completed_job(client, catalog)
    expire(job)
    page = order_page(client, job).content.decode()
    assert 'id="new-link"' in page
    assert "Send me a new link" in page
    assert "expired" in page
    # The form neither shows nor asks for an address.
    assert BUYER not in page
    form = page[page.index('id="new-link-form"') :]
    form = form[: form.index("</form>")]
    assert 'type="email"' not in form
    assert 'name="email"' not in form


def test_valid_link_not_offered_new_one(client, catalog):
    job = completed_job(client, catalog)
    page = order_page(client, job).content.decode()
    assert 'id="new-link"' not in page
    assert "We emailed you a download link, valid until" in page


def test_new_link_sent_to_job_email(client, catalog, settings):
    job = completed_job(client, catalog)
    [old] = download_tokens(settings)
    expire(job)

    response = ask_for_link(client, job)

    assert "We sent a new download link to the email address on this order." in notices(
        response
    )
    tokens = download_tokens(settings)
    assert len(tokens) == 2
    assert client.get(f"/downloads/{tokens[1]}").status_code == 200
    assert client.get(f"/downloads/{old}").status_code == 404
    job = Job.objects.get(pk=job.pk)
    assert job.download_expires_at > timezone.now() + timedelta(hours=23)
    [requested] = events(job, "new_link_requested")
    assert requested.actor == "customer"


def test_new_link_ignores_posted_address(client, catalog, settings):
    job = completed_job(client, catalog)
    expire(job)
    ask_for_link(client, job, email="attacker@example.com")
    assert download_tokens(settings, "attacker@example.com") == []
    assert len(download_tokens(settings, BUYER)) == 2


def test_new_link_limited_per_day(client, catalog, settings):
    settings.SMI_NEW_LINK_REQUESTS_PER_DAY = 3
    job = completed_job(client, catalog)
    for _ in range(3):
        expire(job)
        ask_for_link(client, job)
    expire(job)

    response = ask_for_link(client, job)

    assert any("You have asked for 3 new links" in text for text in notices(response))
    assert len(download_tokens(settings)) == 1 + 3
    assert len(events(Job.objects.get(pk=job.pk), "new_link_requested")) == 3
    page = order_page(client, job).content.decode()
    assert 'id="new-link"' not in page
    assert "You can ask again later" in page


def test_old_requests_do_not_count(client, catalog, settings):
    settings.SMI_NEW_LINK_REQUESTS_PER_DAY = 1
    job = completed_job(client, catalog)
    expire(job)
    ask_for_link(client, job)
    [first] = events(job, "new_link_requested")
    type(first).objects.filter(pk=first.pk).update(
        created_at=timezone.now() - timedelta(hours=25)
    )
    expire(job)
    ask_for_link(client, job)
    assert len(download_tokens(settings)) == 3


def test_no_new_link_after_grace_period(client, catalog, settings):
    settings.SMI_OUTPUT_RETENTION_HOURS = 48
    job = completed_job(client, catalog)
    expire(job, hours_ago=49)
    assert 'id="new-link"' not in order_page(client, job).content.decode()
    response = ask_for_link(client, job)
    assert "A new link cannot be sent for this order." in notices(response)
    assert len(download_tokens(settings)) == 1


def test_no_new_link_when_file_deleted(client, catalog, settings):
    job = completed_job(client, catalog)
    expire(job)
    os.unlink(job.output_path)
    assert 'id="new-link"' not in order_page(client, job).content.decode()
    ask_for_link(client, job)
    assert len(download_tokens(settings)) == 1


def test_no_new_link_after_full_refund(client, catalog, settings):
    job = completed_job(client, catalog)
    job_manager.refund(job.job_id, reason="test", actor="test")
    expire(job)
    assert 'id="new-link"' not in order_page(client, job).content.decode()
    ask_for_link(client, job)
    assert len(download_tokens(settings)) == 1


def test_new_link_needs_post(client, catalog, settings):
    job = completed_job(client, catalog)
    expire(job)
    assert client.get(f"/orders/{job.job_id}/new-link").status_code == 405
    assert len(download_tokens(settings)) == 1


def test_admin_sees_request_in_timeline(admin_client, client, catalog):
    job = completed_job(client, catalog)
    expire(job)
    ask_for_link(client, job)
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    timeline = page[page.index('id="timeline"') :]
    assert "new_link_requested" in timeline
    assert "customer" in timeline


def test_grace_period_follows_shop_settings(client, catalog, settings):
    settings.SMI_OUTPUT_RETENTION_HOURS = 48
    job = completed_job(client, catalog)
    expire(job, hours_ago=2)
    assert 'id="new-link"' in order_page(client, job).content.decode()

    from sellmyimages.shopsettings.config import save_settings
    from sellmyimages.shopsettings.models import ShopSettings

    save_settings(ShopSettings(output_retention_hours=1), actor="test")

    assert 'id="new-link"' not in order_page(client, job).content.decode()
