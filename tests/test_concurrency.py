"""Real processes racing to change one job: only one of them may succeed."""

import multiprocessing

import pytest
from django.db import connection, connections

from sellmyimages.jobs.exceptions import InvalidTransition
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import JobEvent
from tests.factories import force_status, make_job

RACERS = 8

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: set DATABASE_URL=postgres://... (the CI run does)",
    ),
]


def race(job_id, targets, action):
    """Run `action(job_id, target)` in one process per target, all at once."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(targets))
    results = context.Queue()
    connections.close_all()

    def run(target):
        connections.close_all()
        barrier.wait()
        try:
            outcome = action(job_id, target)
        except InvalidTransition as exc:
            outcome = f"refused: {exc}"
        except Exception as exc:  # reported to the parent, which fails the test
            outcome = f"error: {exc!r}"
        results.put((target, outcome))
        connections.close_all()

    processes = [context.Process(target=run, args=(target,)) for target in targets]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return [results.get(timeout=5) for _ in targets]


def claim(job_id, target):
    return job_manager.update_status(
        job_id, "processing", expected_status="pending", actor=f"racer-{target}"
    )


def pay(job_id, target):
    return job_manager.mark_payment_completed(job_id, f"pi_racer_{target}")


def move(job_id, target):
    return job_manager.update_status(job_id, target, expected_status="pending")


def test_one_claim_wins(catalog):
    job = force_status(make_job(catalog("photo_cat_chelsea_451x300.png")), "pending")

    outcomes = race(job.job_id, list(range(RACERS)), claim)

    assert sorted(outcome for _, outcome in outcomes) == [False] * (RACERS - 1) + [True]
    transitions = JobEvent.objects.filter(job=job, to_status="processing")
    assert transitions.count() == 1


def test_one_payment_wins(catalog):
    job = make_job(catalog("photo_cat_chelsea_451x300.png"))

    outcomes = race(job.job_id, list(range(RACERS)), pay)

    winners = [target for target, outcome in outcomes if outcome is True]
    refused = [outcome for _, outcome in outcomes if str(outcome).startswith("refused")]
    assert len(winners) == 1
    assert len(refused) == RACERS - 1
    job = job_manager.get_job(job.job_id)
    assert job.payment_intent_id == f"pi_racer_{winners[0]}"
    assert JobEvent.objects.filter(job=job, event="payment_completed").count() == 1


def test_conflicting_moves_one_wins(catalog):
    job = force_status(make_job(catalog("photo_cat_chelsea_451x300.png")), "pending")
    targets = ["processing", "failed"] * (RACERS // 2)

    outcomes = race(job.job_id, targets, move)

    successes = [target for target, outcome in outcomes if outcome is True]
    assert len(successes) == 1
    others = [outcome for _, outcome in outcomes if outcome is not True]
    # Losers either see the same status already set (False) or are refused.
    assert all(o is False or str(o).startswith("refused") for o in others)
    assert job_manager.get_job(job.job_id).status == successes[0]
    assert JobEvent.objects.filter(job=job, from_status="pending").count() == 1
