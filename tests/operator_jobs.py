"""Jobs in the states an operator acts on, made through the real purchase path."""

import email
import email.policy
import re
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from sellmyimages.jobs.models import Job
from tests.conftest import files_in, run_tasks

CAT = "photo_cat_chelsea_451x300.png"
BUYER = "buyer@example.com"
LINK = re.compile(r"/downloads/([0-9a-f]{64})")


def buy(client, catalog_name, resolution="4x", buyer=BUYER):
    """Order through the API and pay on the local checkout; return the job id."""
    response = client.post(
        "/api/v1/jobs",
        {"catalog_image": catalog_name, "resolution": resolution},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    checkout = created["checkout_url"].split("://", 1)[1].split("/", 1)[1]
    paid = client.post(f"/{checkout}", {"action": "pay", "email": buyer})
    assert paid.status_code == 302, paid.content
    return created["job_id"]


def completed_job(client, catalog, buyer=BUYER):
    job_id = buy(client, catalog(CAT), buyer=buyer)
    run_tasks()
    job = Job.objects.get(job_id=job_id)
    assert job.status == "completed"
    return job


def failed_job_with_failed_refund(client, catalog, settings):
    """Return a paid job that failed and whose automatic refund failed.

    The source disappears before processing, and test mode is off while
    the refund runs, so the local payment backend rejects it for good.
    """
    name = catalog(CAT)
    job_id = buy(client, name)
    source = Path(settings.SMI_CATALOG_DIR) / name
    original_bytes = source.read_bytes()
    source.unlink()
    settings.SMI_TEST_MODE = False
    run_tasks()
    settings.SMI_TEST_MODE = True
    source.write_bytes(original_bytes)
    job = Job.objects.get(job_id=job_id)
    assert job.status == "failed"
    assert job.payment_status == "paid"
    assert [refund.status for refund in job.refunds.all()] == ["failed"]
    return job


def age(job, minutes):
    """Make a job look unchanged for `minutes`, as a crashed worker leaves it."""
    earlier = timezone.now() - timedelta(minutes=minutes)
    Job.objects.filter(pk=job.pk).update(updated_at=earlier)


def outbox(settings):
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in files_in(settings.SMI_OUTBOX_DIR)
    ]


def download_tokens(settings, recipient=BUYER):
    """Return the download tokens emailed to `recipient`, oldest first."""
    tokens = []
    # The outbox names files by the time they were written.
    for message in outbox(settings):
        if message["To"] != recipient:
            continue
        match = LINK.search(message.get_body(preferencelist=("plain",)).get_content())
        if match:
            tokens.append(match.group(1))
    return tokens


def events(job, event):
    return list(job.events.filter(event=event).order_by("created_at", "id"))
