"""`smi jobs`: listing, showing and acting on jobs from the command line."""

import getpass
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from django.utils import timezone

from sellmyimages.cli import main
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job
from sellmyimages.payments.models import Refund
from tests.conftest import run_tasks
from tests.factories import make_job
from tests.operator_jobs import (
    CAT,
    buy,
    completed_job,
    download_tokens,
    events,
    failed_job_with_failed_refund,
)

pytestmark = pytest.mark.django_db(transaction=True)

ACTOR = f"cli:{getpass.getuser()}"


def smi(*args, stdin=None):
    return CliRunner().invoke(
        main, ["jobs", *args], input=stdin, catch_exceptions=False
    )


def listed(*args):
    result = smi("list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [row["job_id"] for row in json.loads(result.stdout)]


def reload(job):
    return Job.objects.get(pk=job.pk)


# list and show


def test_list_table_by_default(client, catalog):
    job = completed_job(client, catalog)
    result = smi("list")
    assert result.exit_code == 0
    assert str(job.job_id) in result.stdout
    assert "completed" in result.stdout
    assert f"{job.customer_price} USD" in result.stdout


def test_list_filters_like_admin(client, catalog):
    done = completed_job(client, catalog, buyer="done@example.com")
    unpaid = make_job(catalog(CAT), resolution="8x", email="unpaid@example.com")
    job_manager.update_job(done.job_id, provider_job_id="prov-42-xyz")

    assert listed("--status", "completed") == [str(done.job_id)]
    assert listed("--payment-status", "unpaid") == [str(unpaid.job_id)]
    assert listed("--provider", "local") == [str(done.job_id)]
    assert listed("--resolution", "8x") == [str(unpaid.job_id)]
    assert listed("--search", "done@exa") == [str(done.job_id)]
    assert listed("--search", "42-xyz") == [str(done.job_id)]
    assert listed("--search", done.payment_intent_id[-10:]) == [str(done.job_id)]
    assert listed("--search", done.checkout_session_id) == [str(done.job_id)]
    assert listed("--search", str(unpaid.job_id)[:13]) == [str(unpaid.job_id)]


def test_list_date_range(catalog):
    old = make_job(catalog(CAT))
    new = make_job(catalog(CAT))
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    today = timezone.now().date()
    assert listed("--since", str(today), "--until", str(today)) == [str(new.job_id)]
    assert listed("--until", str(today - timedelta(days=9))) == [str(old.job_id)]


def test_list_json_has_money(client, catalog):
    job = completed_job(client, catalog)
    [row] = json.loads(smi("list", "--json").stdout)
    assert Decimal(row["price"]) == job.customer_price
    assert Decimal(row["cost"]) == job.provider_cost
    assert Decimal(row["margin"]) == job.customer_price - job.provider_cost


@pytest.mark.parametrize(
    "args",
    [
        ["--status", "lost"],
        ["--since", "yesterday"],
        ["--order-by", "password"],
        ["--limit", "0"],
    ],
)
def test_list_bad_input_exits_2(args):
    result = smi("list", *args)
    assert result.exit_code == 2
    assert result.stdout == ""


def test_show_json_has_trail(client, catalog):
    job = completed_job(client, catalog)
    result = smi("show", str(job.job_id), "--json")
    assert result.exit_code == 0
    detail = json.loads(result.stdout)
    assert detail["payment_intent_id"] == job.payment_intent_id
    assert detail["checkout_session_id"] == job.checkout_session_id
    assert detail["download_count"] == 0
    transitions = [(e["from"], e["to"]) for e in detail["events"] if e["to"]]
    assert transitions[-1] == ("processing", "completed")


def test_show_unknown_job_exits_3():
    result = smi("show", "00000000-0000-0000-0000-000000000000")
    assert result.exit_code == 3
    assert "not found" in result.stderr


# Actions


def test_retry_failed_job(client, catalog, settings):
    job = failed_job_with_failed_refund(client, catalog, settings)
    result = smi("retry", str(job.job_id), "--reason", "source restored")
    assert result.exit_code == 0, result.output
    assert "moved back to pending" in result.stdout
    [retried] = events(reload(job), "retried")
    assert retried.actor == ACTOR
    assert retried.reason == "source restored"
    run_tasks()
    assert reload(job).status == "completed"


def test_retry_rejected_exits_1(client, catalog):
    job = completed_job(client, catalog)
    result = smi("retry", str(job.job_id))
    assert result.exit_code == 1
    assert "only failed jobs and stuck" in result.stderr
    assert reload(job).status == "completed"


def test_refund_partial(client, catalog):
    job = completed_job(client, catalog)
    result = smi(
        "refund", str(job.job_id), "--amount", "0.20", "--reason", "late delivery"
    )
    assert result.exit_code == 0, result.output
    [refund] = Refund.objects.filter(job=job)
    assert refund.amount == Decimal("0.20")
    assert refund.kind == "admin"
    assert refund.actor == ACTOR
    assert refund.reason == "late delivery"
    assert reload(job).payment_status == "partially_refunded"


@pytest.mark.parametrize(
    "args",
    [
        ["--amount", "0.20"],
        ["--amount", "0.20", "--reason", "  "],
        ["--amount", "abc", "--reason", "x"],
        ["--amount", "-1", "--reason", "x"],
        ["--amount", "0.001", "--reason", "x"],
    ],
)
def test_refund_bad_input_exits_2(client, catalog, args):
    job = completed_job(client, catalog)
    result = smi("refund", str(job.job_id), *args)
    assert result.exit_code == 2
    assert not Refund.objects.filter(job=job).exists()


def test_refund_unpaid_rejected(catalog):
    job = make_job(catalog(CAT))
    result = smi("refund", str(job.job_id), "--reason", "x")
    assert result.exit_code == 1
    assert "only a paid job can be refunded" in result.stderr


def test_resend(client, catalog, settings):
    job = completed_job(client, catalog)
    result = smi("resend", str(job.job_id))
    assert result.exit_code == 0
    assert len(download_tokens(settings)) == 2
    assert events(reload(job), "download_token_issued")[-1].actor == ACTOR


def test_extend(client, catalog):
    job = completed_job(client, catalog)
    before = job.download_expires_at
    result = smi("extend", str(job.job_id), "--hours", "12", "--json")
    assert result.exit_code == 0
    [outcome] = json.loads(result.stdout)
    assert outcome["ok"] is True
    assert reload(job).download_expires_at == before + timedelta(hours=12)


@pytest.mark.parametrize("hours", ["0", "-3", "1.5", "9000"])
def test_extend_bad_hours_exits_2(client, catalog, hours):
    job = completed_job(client, catalog)
    result = smi("extend", str(job.job_id), "--hours", hours)
    assert result.exit_code == 2
    assert reload(job).download_expires_at == job.download_expires_at


def test_fail(client, catalog):
    job = Job.objects.get(job_id=buy(client, catalog(CAT)))
    result = smi("fail", str(job.job_id), "--reason", "duplicate order")
    assert result.exit_code == 0
    job = reload(job)
    assert job.status == "failed"
    assert job.failure_detail == "duplicate order"
    assert events(job, "failure_requested")[0].actor == ACTOR


def test_fail_needs_reason(catalog):
    job = make_job(catalog(CAT))
    assert smi("fail", str(job.job_id)).exit_code == 2
    assert reload(job).status == "awaiting_payment"


# Several jobs at once


def test_bulk_from_stdin_with_json(client, catalog):
    first = make_job(catalog(CAT))
    second = make_job(catalog(CAT))
    ids = f"{first.job_id}\n{second.job_id}\n"
    result = smi("fail", "-", "--reason", "test run", "--json", stdin=ids)
    assert result.exit_code == 0
    outcomes = json.loads(result.stdout)
    assert [o["job_id"] for o in outcomes] == [str(first.job_id), str(second.job_id)]
    assert all(o["ok"] for o in outcomes)
    assert reload(first).status == "failed"
    assert reload(second).status == "failed"


def test_bulk_unknown_id_exits_3(catalog):
    job = make_job(catalog(CAT))
    missing = "00000000-0000-0000-0000-000000000000"
    result = smi("fail", str(job.job_id), missing, "--reason", "x", "--json")
    assert result.exit_code == 3
    outcomes = {o["job_id"]: o for o in json.loads(result.stdout)}
    assert outcomes[str(job.job_id)]["ok"] is True
    assert outcomes[missing]["code"] == "not_found"
    assert reload(job).status == "failed"


def test_bulk_rejection_wins_over_not_found(client, catalog):
    done = completed_job(client, catalog)
    result = smi("fail", str(done.job_id), "not-a-uuid", "--reason", "x")
    assert result.exit_code == 1
    assert result.stderr.count("error: ") == 2


def test_repeated_id_acted_on_once(catalog):
    job = make_job(catalog(CAT))
    result = smi("fail", str(job.job_id), str(job.job_id), "--reason", "x")
    assert result.exit_code == 0
    assert len(events(reload(job), "failure_requested")) == 1
