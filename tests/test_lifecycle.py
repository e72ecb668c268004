"""Every allowed and forbidden status change, through the JobManager."""

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from sellmyimages.jobs import signals
from sellmyimages.jobs.exceptions import InvalidTransition, JobNotFound, JobValidationError
from sellmyimages.jobs.lifecycle import ALLOWED_TRANSITIONS
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import JobEvent, PaymentStatus, Status
from tests.factories import force_status, make_job

# The shortest allowed path from a new job to each status.
PATH_TO = {
    Status.AWAITING_PAYMENT: [],
    Status.PENDING: ["pending"],
    Status.PROCESSING: ["pending", "processing"],
    Status.COMPLETED: ["pending", "processing", "completed"],
    Status.FAILED: ["pending", "failed"],
    Status.ABANDONED: ["abandoned"],
}

ALLOWED = {
    ("awaiting_payment", "pending"),
    ("awaiting_payment", "abandoned"),
    ("awaiting_payment", "failed"),
    ("pending", "processing"),
    ("pending", "failed"),
    ("processing", "completed"),
    ("processing", "failed"),
    ("failed", "pending"),
    ("abandoned", "pending"),
}

ALL_PAIRS = [
    (a, b) for a, b in itertools.product(Status.values, Status.values) if a != b
]


def test_table_matches_the_specification():
    table = {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


@pytest.fixture
def job(db, catalog):
    return make_job(catalog("photo_cat_chelsea_451x300.png"))


@pytest.mark.parametrize("from_status,to_status", sorted(ALLOWED))
def test_allowed_transition(job, from_status, to_status):
    job = force_status(job, *PATH_TO[from_status])
    assert job.status == from_status

    assert job_manager.update_status(job.job_id, to_status, actor="tester") is True

    job = job_manager.get_job(job.job_id)
    assert job.status == to_status
    event = job.events.filter(event="status_changed").last()
    assert (event.from_status, event.to_status, event.actor) == (from_status, to_status, "tester")


@pytest.mark.parametrize(
    "from_status,to_status", [pair for pair in ALL_PAIRS if pair not in ALLOWED]
)
def test_forbidden_transition_names_both_statuses(job, from_status, to_status):
    job = force_status(job, *PATH_TO[from_status])
    events_before = JobEvent.objects.filter(job=job).count()

    with pytest.raises(InvalidTransition) as raised:
        job_manager.update_status(job.job_id, to_status)

    assert repr(from_status) in str(raised.value)
    assert repr(to_status) in str(raised.value)
    assert job_manager.get_job(job.job_id).status == from_status
    assert JobEvent.objects.filter(job=job).count() == events_before


@pytest.mark.parametrize("status", Status.values)
def test_same_status_is_a_no_op(job, status):
    job = force_status(job, *PATH_TO[status])
    events_before = JobEvent.objects.filter(job=job).count()

    assert job_manager.update_status(job.job_id, status) is False
    assert JobEvent.objects.filter(job=job).count() == events_before


def test_retry_of_refunded_job_is_refused(job):
    job = force_status(job, "pending", "failed")
    job_manager.update_job(job.job_id, payment_status=PaymentStatus.REFUNDED)

    with pytest.raises(InvalidTransition, match="refunded"):
        job_manager.update_status(job.job_id, "pending")


def test_unknown_status_is_a_validation_error(job):
    with pytest.raises(JobValidationError, match="status"):
        job_manager.update_status(job.job_id, "done")


def test_timestamps_are_aware_utc(job):
    job = force_status(job, "pending", "processing", "completed")
    for name in ("created_at", "paid_at", "processing_started_at", "completed_at"):
        value = getattr(job, name)
        assert value is not None, name
        assert value.utcoffset() == timedelta(0), name
    assert job.created_at <= job.paid_at <= job.processing_started_at <= job.completed_at


def test_missing_job_raises_job_not_found(db):
    with pytest.raises(JobNotFound):
        job_manager.get_job("7f0c1d0e-0000-4000-8000-000000000000")
    with pytest.raises(JobNotFound):
        job_manager.update_status("not-a-uuid", "pending")


def test_expected_status_guards_a_claim(job):
    force_status(job, "pending")
    assert job_manager.update_status(job.job_id, "processing", expected_status="pending")
    # A second claimant sees the job already moved and gets "no change".
    assert not job_manager.update_status(job.job_id, "processing", expected_status="pending")


def test_late_payment_revives_abandoned_job(job):
    force_status(job, "abandoned")
    assert job_manager.mark_payment_completed(job.job_id, "pi_late", actor="webhook")
    job = job_manager.get_job(job.job_id)
    assert job.status == Status.PENDING
    assert job.payment_status == PaymentStatus.PAID
    assert job.abandoned_at is not None


def test_payment_recorded_once(job):
    assert job_manager.mark_payment_completed(job.job_id, "pi_once")
    assert not job_manager.mark_payment_completed(job.job_id, "pi_once")
    with pytest.raises(InvalidTransition):
        job_manager.mark_payment_completed(job.job_id, "pi_other")
    assert job.events.filter(event="payment_completed").count() == 1


@pytest.mark.django_db(transaction=True)
def test_signals_sent_after_commit_and_receiver_errors_logged(catalog, caplog):
    received = []

    def on_change(sender, job, old_status, new_status, **kwargs):
        received.append((old_status, new_status))

    def broken(sender, job, **kwargs):
        raise RuntimeError("receiver bug")

    signals.job_status_changed.connect(on_change)
    signals.payment_completed.connect(broken)
    try:
        job = make_job(catalog("photo_cat_chelsea_451x300.png"))
        job_manager.mark_payment_completed(job.job_id, "pi_signal")
    finally:
        signals.job_status_changed.disconnect(on_change)
        signals.payment_completed.disconnect(broken)

    assert received == [("awaiting_payment", "pending")]
    assert job_manager.get_job(job.job_id).status == "pending"
    assert "signal_receiver_failed" in caplog.text


def test_job_events_are_append_only(job):
    event = job.events.first()
    event.reason = "rewritten"
    with pytest.raises(ValueError):
        event.save()
    with pytest.raises(ValueError):
        event.delete()


def test_get_jobs_filters_and_orders(job, catalog):
    other = make_job(catalog("photo_cat_chelsea_451x300.png", "cat2.png"), email="x@example.com")
    force_status(other, "pending")

    assert [j.job_id for j in job_manager.get_jobs(status=["pending"])] == [other.job_id]
    assert [j.job_id for j in job_manager.get_jobs(email="X@example.com")] == [other.job_id]
    newest_first = job_manager.get_jobs(order_by="-created_at")
    assert newest_first[0].job_id == other.job_id
    later = timezone.now() + timedelta(seconds=1)
    assert job_manager.get_jobs(created_after=later) == []
    with pytest.raises(JobValidationError, match="order_by"):
        job_manager.get_jobs(order_by="email; drop table")
    with pytest.raises(JobValidationError, match="status"):
        job_manager.get_jobs(status=["bogus"])


def test_update_job_rejects_unknown_and_protected_fields(job):
    with pytest.raises(JobValidationError, match="colour"):
        job_manager.update_job(job.job_id, colour="blue")
    with pytest.raises(JobValidationError, match="status"):
        job_manager.update_job(job.job_id, status="completed")
    with pytest.raises(JobValidationError, match="email"):
        job_manager.update_job(job.job_id, email="not an email")


def test_cost_data_refuses_floats(job):
    with pytest.raises(JobValidationError, match="provider_cost"):
        job_manager.update_cost_data(job.job_id, provider_cost=0.64)
    job_manager.update_cost_data(job.job_id, provider_cost="0.64", credits_required=16)
    job = job_manager.get_job(job.job_id)
    assert str(job.provider_cost) == "0.6400"
    assert job.events.filter(event="cost_updated").exists()


def test_download_token_stored_hashed(job):
    job = force_status(job, "pending", "processing", "completed")
    token = job_manager.generate_download_token(job.job_id)
    job = job_manager.get_job(job.job_id)
    assert len(token) == 64
    assert job.download_token_hash != token
    assert token not in str(list(job.events.values_list("data", flat=True)))
    assert job_manager.find_by_download_token(token).job_id == job.job_id
    newer = job_manager.generate_download_token(job.job_id)
    assert job_manager.find_by_download_token(token) is None
    assert job_manager.find_by_download_token(newer).job_id == job.job_id
