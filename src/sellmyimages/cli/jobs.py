"""`smi jobs`: list, inspect and act on jobs.

Exit codes: 0 when every job was handled, 1 when an action was rejected or
failed for at least one job, 2 for invalid input, and 3 when a job id was
not found and nothing else went wrong.
"""

import datetime
import getpass
import json
import os
import sys
from decimal import Decimal, InvalidOperation

import click

from sellmyimages.cli import EXIT_FAILED, EXIT_NOT_FOUND, fail, main, setup_django

# The choices below repeat jobs.models and jobs.manager, because this module
# is imported before Django is set up.
STATUSES = [
    "awaiting_payment",
    "pending",
    "processing",
    "completed",
    "failed",
    "abandoned",
]
PAYMENT_STATUSES = ["unpaid", "paid", "refunded", "partially_refunded", "failed"]
MAX_EXTEND_HOURS = 24 * 365
WIDE_OUTPUT_COLUMNS = 200


def cli_actor():
    """Return the audit-trail actor for this command: "cli:<os user>"."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        # No login name in the environment and no passwd entry, as in
        # some containers.
        user = f"uid{os.getuid()}"
    return f"cli:{user}"[:128]


def parse_day(ctx, param, value):
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date such as 2026-01-31."
        ) from None


def parse_amount(ctx, param, value):
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a number such as 2.50.") from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter(f"{value!r} is not more than zero.")
    if amount.as_tuple().exponent < -2:
        raise click.BadParameter(f"{value!r} has more than two decimal places.")
    return amount


def require_text(ctx, param, value):
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty.")
    return value


@main.group()
def jobs():
    """List, inspect and act on jobs."""


# Listing and showing


@jobs.command("list")
@click.option(
    "--status",
    multiple=True,
    type=click.Choice(STATUSES),
    help="Only jobs in this status; repeat for several.",
)
@click.option(
    "--payment-status",
    multiple=True,
    type=click.Choice(PAYMENT_STATUSES),
    help="Only jobs with this payment status; repeat for several.",
)
@click.option("--provider", default=None, help="Only jobs upscaled by this provider.")
@click.option(
    "--resolution", default=None, help="Only jobs at this resolution, e.g. 4x."
)
@click.option(
    "--since",
    callback=parse_day,
    help="Only jobs created on or after this day (YYYY-MM-DD, UTC).",
)
@click.option(
    "--until",
    callback=parse_day,
    help="Only jobs created on or before this day (YYYY-MM-DD, UTC).",
)
@click.option(
    "--search",
    default=None,
    help=(
        "Part of a job id, email, checkout session id, payment intent id or "
        "provider job id."
    ),
)
@click.option(
    "--email", default=None, help="Only jobs for this customer email (exact)."
)
@click.option("--limit", default=20, show_default=True, type=int, help="Maximum rows.")
@click.option("--offset", default=0, show_default=True, type=int, help="Rows to skip.")
@click.option(
    "--order-by", default="-created_at", show_default=True, help="Sort column."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_jobs(
    status,
    payment_status,
    provider,
    resolution,
    since,
    until,
    search,
    email,
    limit,
    offset,
    order_by,
    as_json,
):
    """List jobs, newest first, with the Jobs admin's filters."""
    setup_django()
    from sellmyimages.jobs.exceptions import JobValidationError
    from sellmyimages.jobs.manager import (
        ORDERABLE_FIELDS,
        annotate_money,
        day_bounds,
        job_manager,
    )

    if order_by.lstrip("-") not in ORDERABLE_FIELDS:
        fail(
            f"--order-by {order_by!r} is not one of "
            f"{', '.join(sorted(ORDERABLE_FIELDS))}."
        )
    if not 1 <= limit <= 1000:
        fail(f"--limit {limit} is not between 1 and 1000.")
    if offset < 0:
        fail(f"--offset {offset} is not zero or more.")
    created_after, created_before = day_bounds(since, until)
    try:
        found = job_manager.filter_jobs(
            status=list(status) or None,
            payment_status=list(payment_status) or None,
            provider=provider,
            resolution=resolution,
            created_after=created_after,
            created_before=created_before,
            search=search,
            email=email,
        )
    except JobValidationError as exc:
        fail(str(exc))
    found = annotate_money(found).order_by(order_by, "-id")[offset : offset + limit]
    rows = [job_summary(job) for job in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "job id",
        "status",
        "payment",
        "res",
        "price",
        "cost",
        "margin",
        "provider",
        "created",
    )
    for row in rows:
        table.add_row(
            row["job_id"],
            row["status"],
            row["payment_status"],
            row["resolution"],
            f"{row['price']} {row['currency'].upper()}",
            row["cost"],
            row["margin"] or "-",
            row["provider"] or "-",
            row["created_at"][:19],
        )
    console = Console()
    if not console.is_terminal:
        # Piped output has no width to fit; a wide one keeps ids whole.
        console = Console(width=WIDE_OUTPUT_COLUMNS)
    console.print(table)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show_job(job_id, as_json):
    """Show one job with its references, money and audit trail."""
    setup_django()
    from sellmyimages.jobs.exceptions import JobNotFound
    from sellmyimages.jobs.manager import annotate_money, job_manager
    from sellmyimages.jobs.models import Job

    try:
        job = job_manager.get_job(job_id)
    except JobNotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    job = annotate_money(Job.objects.filter(pk=job.pk)).get()
    detail = job_summary(job)
    detail["events"] = [
        {
            "at": event.created_at.isoformat(),
            "event": event.event,
            "from": event.from_status,
            "to": event.to_status,
            "actor": event.actor,
            "reason": event.reason,
            "data": event.data,
        }
        for event in job.events.all()
    ]
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    for key, value in detail.items():
        if key != "events":
            click.echo(f"{key:>22}: {value if value not in (None, '') else '-'}")
    click.echo("")
    for event in detail["events"]:
        change = f"{event['from'] or '-'} -> {event['to']}" if event["to"] else ""
        click.echo(
            f"{event['at'][:19]}  {event['event']:<24} {change:<32} "
            f"{event['actor']:<16} {event['reason']}"
        )


def iso(moment):
    return moment.isoformat() if moment else None


def text(value):
    return None if value is None else str(value)


def job_summary(job):
    return {
        "job_id": str(job.job_id),
        "status": job.status,
        "payment_status": job.payment_status,
        "resolution": job.resolution,
        "email": job.email,
        "source": job.source_ref,
        "source_size": f"{job.source_width}x{job.source_height}",
        "price": str(job.customer_price),
        "currency": job.currency,
        "provider_cost": text(job.provider_cost),
        "payment_fee": text(job.payment_fee),
        "refund_amount": text(job.refund_amount),
        "cost": text(getattr(job, "total_cost", None)),
        "margin": text(getattr(job, "margin_amount", None)),
        "credits_required": text(job.credits_required),
        "payment_provider": job.payment_provider,
        "checkout_session_id": job.checkout_session_id,
        "payment_intent_id": job.payment_intent_id,
        "provider": job.provider,
        "provider_job_id": job.provider_job_id,
        "created_at": job.created_at.isoformat(),
        "paid_at": iso(job.paid_at),
        "completed_at": iso(job.completed_at),
        "failed_at": iso(job.failed_at),
        "refunded_at": iso(job.refunded_at),
        "failure_code": job.failure_code,
        "failure_detail": job.failure_detail,
        "output_size": (
            f"{job.output_width}x{job.output_height}" if job.output_width else None
        ),
        "download_expires_at": iso(job.download_expires_at),
        "download_count": job.download_count,
        "attempt_count": job.attempt_count,
    }


# Actions. Each takes one or more job ids, or "-" to read ids from stdin.


def read_job_ids(job_ids):
    if list(job_ids) == ["-"]:
        job_ids = sys.stdin.read().split()
    if not job_ids:
        fail("no job ids given.")
    # Keep the order, drop repeats: acting twice on one job is never meant.
    return list(dict.fromkeys(job_ids))


def run_on_jobs(label, job_ids, run, as_json):
    """Call run(job_id) for each job, with a progress bar; exit with a summary code."""
    setup_django()
    from rich.console import Console
    from rich.progress import Progress

    from sellmyimages.jobs.exceptions import JobError, JobNotFound
    from sellmyimages.payments.backends.base import PaymentError

    ids = read_job_ids(job_ids)
    results = []
    console = Console(stderr=True)
    show_progress = len(ids) > 1 and console.is_terminal
    with Progress(
        console=console, transient=True, disable=not show_progress
    ) as progress:
        task = progress.add_task(label, total=len(ids))
        for job_id in ids:
            try:
                outcome = run(job_id)
            except JobNotFound as exc:
                results.append(
                    {
                        "job_id": job_id,
                        "ok": False,
                        "error": str(exc),
                        "code": "not_found",
                    }
                )
            except (JobError, PaymentError) as exc:
                results.append(
                    {
                        "job_id": job_id,
                        "ok": False,
                        "error": str(exc),
                        "code": "rejected",
                    }
                )
            else:
                results.append({"job_id": job_id, "ok": True, "result": outcome})
            progress.advance(task)

    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for result in results:
            if result["ok"]:
                click.echo(f"{result['job_id']}: {result['result']}")
            else:
                click.echo(f"error: {result['error']}", err=True)
    codes = {result.get("code") for result in results if not result["ok"]}
    if "rejected" in codes:
        sys.exit(EXIT_FAILED)
    if "not_found" in codes:
        sys.exit(EXIT_NOT_FOUND)


def job_ids_argument(function):
    return click.argument("job_ids", nargs=-1, required=True)(function)


def json_option(function):
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts."
    )(function)


@jobs.command("retry")
@job_ids_argument
@click.option("--reason", default="", help="Why, for the job's audit trail.")
@json_option
def retry_jobs(job_ids, reason, as_json):
    """Process failed or stuck jobs again.

    A failed job must be paid, and its automatic refund must have failed.
    A pending or processing job must be stuck: unchanged for
    SMI_STUCK_AFTER_MINUTES.
    """
    actor = cli_actor()

    def run(job_id):
        from sellmyimages.jobs.manager import RETRY_RESULTS, job_manager

        return RETRY_RESULTS[job_manager.retry(job_id, actor=actor, reason=reason)]

    run_on_jobs("Retrying", job_ids, run, as_json)


@jobs.command("refund")
@job_ids_argument
@click.option(
    "--amount",
    callback=parse_amount,
    help=(
        "Amount to refund, in the shop currency; without it, all that is not "
        "yet refunded."
    ),
)
@click.option(
    "--reason", required=True, callback=require_text, help="Why, kept on the refund."
)
@json_option
def refund_jobs(job_ids, amount, reason, as_json):
    """Refund paid jobs through their payment provider."""
    actor = cli_actor()

    def run(job_id):
        from sellmyimages.jobs.manager import job_manager

        refund = job_manager.refund(job_id, amount, reason=reason, actor=actor)
        return f"refund of {refund.amount} {refund.currency.upper()} is {refund.status}"

    run_on_jobs("Refunding", job_ids, run, as_json)


@jobs.command("resend")
@job_ids_argument
@json_option
def resend_jobs(job_ids, as_json):
    """Email new download links; each previous link stops working."""
    actor = cli_actor()

    def run(job_id):
        from sellmyimages.jobs.manager import job_manager

        job_manager.resend_download(job_id, actor=actor)
        return "download email sent with a new link"

    run_on_jobs("Resending", job_ids, run, as_json)


@jobs.command("extend")
@job_ids_argument
@click.option(
    "--hours",
    required=True,
    type=click.IntRange(1, MAX_EXTEND_HOURS),
    help="Hours added to the expiry, or to now if the link has expired.",
)
@json_option
def extend_jobs(job_ids, hours, as_json):
    """Make download links work longer."""
    actor = cli_actor()

    def run(job_id):
        from sellmyimages.jobs.manager import job_manager

        expires_at = job_manager.extend_expiry(job_id, hours, actor=actor)
        return f"download link now expires {expires_at.isoformat()}"

    run_on_jobs("Extending", job_ids, run, as_json)


@jobs.command("fail")
@job_ids_argument
@click.option(
    "--reason", required=True, callback=require_text, help="Why the job failed."
)
@json_option
def fail_jobs(job_ids, reason, as_json):
    """Mark jobs failed; a paid job is then refunded automatically."""
    actor = cli_actor()

    def run(job_id):
        from sellmyimages.jobs.manager import job_manager

        job_manager.mark_failed_by_operator(job_id, reason=reason, actor=actor)
        return "marked failed"

    run_on_jobs("Failing", job_ids, run, as_json)
