"""Circuit breakers, failover between engines, and recovery of stalled jobs."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job
from sellmyimages.upscaling import circuit
from sellmyimages.upscaling.models import CircuitState, ProviderSubmission
from sellmyimages.upscaling.tasks import poll_processing_jobs, process_job
from sellmyimages.upscaling.watch import check_job, schedule_watch
from tests.conftest import run_tasks
from tests.factories import force_status, make_job
from tests.fakes import replicate as replicate_fake
from tests.fakes.loopback import DjangoApp, drive
from tests.fakes.replicate import FakeReplicate
from tests.fakes.upsampler import upsampler  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

CAT = "photo_cat_chelsea_451x300.png"
CLOSED_PORT_BASE = "http://127.0.0.2:9/api/v1"


def paid_job(catalog, name=CAT):
    return force_status(make_job(catalog(name)), "pending")


def events(job):
    return list(job.events.values_list("event", flat=True))


def upsampler_posts(fake):
    return fake.count("POST", r"/api/v1/precise-upscale")


@pytest.fixture
def replicate_too(settings, upsampler):
    """A fake Replicate beside the fake Upsampler, both configured."""
    with FakeReplicate() as fake:
        replicate_fake.configure(settings, fake)
        # configure() lists only Replicate; the test sets the order it needs.
        settings.UPSAMPLER_API_KEY = upsampler.api_key
        settings.UPSAMPLER_API_BASE = upsampler.api_base
        yield fake


# Failover between engines


def test_circuit_opens_and_new_jobs_go_local(upsampler, catalog, client, settings):
    settings.SMI_UPSCALERS = ["upsampler", "local"]
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 2
    upsampler.inject("submit_error", times=100, status=502)

    first = drive(paid_job(catalog), upsampler, client=client)

    assert first.status == "completed"
    assert first.provider == "local"
    assert "provider_failover" in events(first)
    assert upsampler_posts(upsampler) == 2
    state = CircuitState.objects.get(provider="upsampler")
    assert state.consecutive_failures == 2
    assert state.retry_at > timezone.now()

    second = drive(paid_job(catalog), upsampler, client=client)

    assert second.status == "completed"
    assert second.provider == "local"
    # The open circuit kept the new job away from Upsampler entirely.
    assert upsampler_posts(upsampler) == 2


def test_half_open_probe_closes_circuit(upsampler, catalog, client, settings):
    settings.SMI_UPSCALERS = ["upsampler", "local"]
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 1
    settings.SMI_CIRCUIT_COOLDOWN_SECONDS = 1
    upsampler.inject("submit_error", status=500)
    first = drive(paid_job(catalog), upsampler, client=client)
    assert first.provider == "local"

    time.sleep(1.1)
    second = drive(paid_job(catalog), upsampler, client=client)

    assert second.status == "completed"
    assert second.provider == "upsampler"
    state = CircuitState.objects.get(provider="upsampler")
    assert state.consecutive_failures == 0
    assert state.retry_at is None


def test_failed_probe_reopens_circuit(upsampler, catalog, client, settings):
    settings.SMI_UPSCALERS = ["upsampler", "local"]
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 1
    settings.SMI_CIRCUIT_COOLDOWN_SECONDS = 1
    upsampler.inject("submit_error", times=2, status=500)
    drive(paid_job(catalog), upsampler, client=client)

    time.sleep(1.1)
    probe = drive(paid_job(catalog), upsampler, client=client)

    assert probe.provider == "local"
    assert upsampler_posts(upsampler) == 2
    state = CircuitState.objects.get(provider="upsampler")
    assert state.consecutive_failures == 2
    assert state.retry_at > timezone.now()


def test_unreachable_provider_fails_over_to_replicate(
    upsampler, replicate_too, catalog, client, settings
):
    settings.SMI_UPSCALERS = ["upsampler", "replicate"]
    settings.UPSAMPLER_API_BASE = CLOSED_PORT_BASE
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 1

    job = drive(paid_job(catalog), upsampler, replicate_too, client=client)

    assert job.status == "completed"
    assert job.provider == "replicate"
    assert job.provider_job_id in replicate_too.jobs
    providers = list(
        ProviderSubmission.objects.filter(job=job)
        .order_by("attempt")
        .values_list("provider", "state")
    )
    assert providers == [("upsampler", "rejected"), ("replicate", "succeeded")]
    # The switch waited for no backoff: the other provider was healthy.
    retry = job.events.get(event="upscale_retry_scheduled")
    assert retry.data["delay_seconds"] == 0.0


def test_submission_in_doubt_never_fails_over(upsampler, catalog, client, settings):
    settings.SMI_UPSCALERS = ["upsampler", "local"]
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 1
    upsampler.inject("submit_timeout", seconds=1.5)

    job = drive(paid_job(catalog), upsampler, client=client)

    # The circuit opened, but the first request may have started a job at
    # Upsampler, so the job stayed there instead of going to the local engine.
    assert CircuitState.objects.get(provider="upsampler").consecutive_failures == 0
    assert job.status == "completed"
    assert job.provider == "upsampler"
    assert "provider_failover" not in events(job)
    providers = set(
        ProviderSubmission.objects.filter(job=job).values_list("provider", flat=True)
    )
    assert providers == {"upsampler"}


def test_replicate_request_that_never_arrived_fails_over(
    upsampler, replicate_too, catalog, client, settings
):
    settings.SMI_UPSCALERS = ["replicate", "upsampler"]
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 1
    replicate_too.inject("submit_drop", seconds=1.5)

    job = drive(paid_job(catalog), upsampler, replicate_too, client=client)

    # Listing Replicate's predictions showed the request started nothing,
    # so the job was free to move to the next provider.
    assert job.status == "completed"
    assert job.provider == "upsampler"
    assert replicate_too.jobs == {}
    assert "provider_submission_not_started" in events(job)


def test_output_too_large_for_provider_skips_it(
    upsampler, replicate_too, catalog, client, settings
):
    settings.SMI_UPSCALERS = ["replicate", "upsampler"]
    settings.SMI_ENGINE_MAX_MEGAPIXELS = {
        **settings.SMI_ENGINE_MAX_MEGAPIXELS,
        "replicate": 1,
    }

    job = drive(paid_job(catalog), upsampler, replicate_too, client=client)

    assert job.status == "completed"
    assert job.provider == "upsampler"
    assert replicate_too.requests == []


# The circuit itself


def test_circuit_allows_one_probe_after_cooldown(settings):
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 2
    settings.SMI_CIRCUIT_COOLDOWN_SECONDS = 60

    circuit.record_failure("upsampler", "provider_unavailable")
    assert circuit.allows("upsampler")
    circuit.record_failure("upsampler", "provider_unavailable")
    assert not circuit.allows("upsampler")

    later = timezone.now() + timedelta(seconds=61)
    assert circuit.allows("upsampler", now=later)
    assert not circuit.allows("upsampler", now=later)

    circuit.record_success("upsampler")
    assert circuit.allows("upsampler")
    assert CircuitState.objects.get(provider="upsampler").consecutive_failures == 0


def test_success_resets_failure_count(settings):
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 2

    circuit.record_failure("replicate", "provider_timeout")
    circuit.record_success("replicate")
    circuit.record_failure("replicate", "provider_timeout")

    assert circuit.allows("replicate")


def test_all_circuits_open_picks_earliest_retry(catalog, settings):
    settings.SMI_UPSCALERS = ["upsampler", "replicate"]
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 1
    settings.SMI_CIRCUIT_COOLDOWN_SECONDS = 300
    circuit.record_failure("replicate", "provider_unavailable")
    circuit.record_failure("upsampler", "provider_unavailable")
    CircuitState.objects.filter(provider="replicate").update(
        retry_at=timezone.now() + timedelta(seconds=10)
    )
    job = make_job(catalog(CAT))

    assert circuit.choose_upscaler(job).name == "replicate"


# Recovery of stalled jobs


def test_lost_watch_task_restarted(upsampler, catalog, client, settings):
    upsampler.inject("no_callback")
    job = paid_job(catalog)
    run_tasks()
    # The worker running the watch task dies: its task row never finishes
    # and the job's next check is long overdue.
    DBTaskResult.objects.filter(
        task_path="sellmyimages.upscaling.watch.watch_remote_job", status="READY"
    ).update(status="RUNNING")
    job_manager.set_next_poll_at(job.job_id, timezone.now() - timedelta(minutes=10))
    settings.SMI_PROVIDER_POLL_INITIAL_SECONDS = 0.2
    settings.SMI_PROVIDER_POLL_MAX_SECONDS = 0.4

    restarted = poll_processing_jobs(limit=10)

    assert restarted == 1
    job = drive(job, upsampler, client=client)
    assert job.status == "completed"


def test_submission_interrupted_by_crash_resent(upsampler, catalog, client, settings):
    settings.SMI_PROVIDER_POLL_INITIAL_SECONDS = 0.2
    settings.SMI_PROVIDER_POLL_MAX_SECONDS = 0.4
    job = force_status(paid_job(catalog), "processing")
    job_manager.update_job(
        job.job_id, provider="upsampler", attempt_count=1, actor="test"
    )
    # What a worker killed during the HTTP request leaves behind: the
    # submission row written before the request, and the job's first check.
    submission = ProviderSubmission.objects.create(
        job=job, provider="upsampler", attempt=1, webhook_secret_hash="0" * 64
    )
    ProviderSubmission.objects.filter(pk=submission.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    job.refresh_from_db()
    schedule_watch(job, 0)

    job = drive(job, upsampler, client=client)

    assert job.status == "completed"
    assert job.provider == "upsampler"
    interrupted = ProviderSubmission.objects.get(pk=submission.pk)
    assert interrupted.error_code == "submission_interrupted"
    assert interrupted.state == "abandoned"
    assert "provider_resubmitting" in events(job)


def test_rerun_after_crash_and_lost_watch(upsampler, catalog, client, settings):
    settings.SMI_PROVIDER_POLL_INITIAL_SECONDS = 0.2
    settings.SMI_PROVIDER_POLL_MAX_SECONDS = 0.4
    job = force_status(paid_job(catalog), "processing")
    job_manager.update_job(
        job.job_id, provider="upsampler", attempt_count=1, actor="test"
    )
    # The worker died during the request and its watch task was lost too;
    # the recovery sweep then runs the processing step again.
    submission = ProviderSubmission.objects.create(
        job=job, provider="upsampler", attempt=1, webhook_secret_hash="1" * 64
    )
    ProviderSubmission.objects.filter(pk=submission.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    process_job.enqueue(str(job.job_id), attempt=1)

    job = drive(job, upsampler, client=client)

    assert job.status == "completed"
    assert ProviderSubmission.objects.get(pk=submission.pk).error_code == (
        "submission_interrupted"
    )


def test_deadline_waits_for_result_being_stored(upsampler, catalog, client, settings):
    upsampler.process_seconds = 3600
    job = paid_job(catalog)
    run_tasks()
    submission = ProviderSubmission.objects.get(job=job)
    # Another worker is storing the result when the deadline passes.
    ProviderSubmission.objects.filter(pk=submission.pk).update(
        state="collecting", collect_started_at=timezone.now()
    )
    Job.objects.filter(pk=job.pk).update(
        processing_started_at=timezone.now() - timedelta(hours=1)
    )
    job.refresh_from_db()

    assert check_job(job) == "collecting"
    job.refresh_from_db()
    assert job.status == "processing"

    # That worker died: its lease lapses, and the next check takes over.
    ProviderSubmission.objects.filter(pk=submission.pk).update(
        collect_started_at=timezone.now() - timedelta(hours=1)
    )
    upsampler.jobs[job.provider_job_id].ready_at = 0
    upsampler.advance(DjangoApp(client))

    assert check_job(job) == "completed"
