"""`smi jobs`: list, inspect and act on jobs."""

import json

import click

from sellmyimages.cli import EXIT_NOT_FOUND, fail, main, setup_django


@main.group()
def jobs():
    """List and inspect jobs."""


@jobs.command("list")
@click.option("--status", multiple=True, help="Only jobs in this status; repeat for several.")
@click.option("--email", default=None, help="Only jobs for this customer email.")
@click.option("--limit", default=20, show_default=True, type=int, help="Maximum rows.")
@click.option("--offset", default=0, show_default=True, type=int, help="Rows to skip.")
@click.option("--order-by", default="-created_at", show_default=True, help="Sort column.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_jobs(status, email, limit, offset, order_by, as_json):
    """List jobs, newest first."""
    setup_django()
    from sellmyimages.jobs.exceptions import JobValidationError
    from sellmyimages.jobs.manager import job_manager

    try:
        found = job_manager.get_jobs(
            status=list(status) or None,
            email=email,
            limit=limit,
            offset=offset,
            order_by=order_by,
        )
    except JobValidationError as exc:
        fail(str(exc))
    rows = [job_summary(job) for job in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("job id", "status", "payment", "res", "price", "provider", "created")
    for row in rows:
        table.add_row(
            row["job_id"],
            row["status"],
            row["payment_status"],
            row["resolution"],
            f"{row['price']} {row['currency'].upper()}",
            row["provider"] or "-",
            row["created_at"][:19],
        )
    Console().print(table)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show_job(job_id, as_json):
    """Show one job with its audit trail."""
    setup_django()
    from sellmyimages.jobs.exceptions import JobNotFound
    from sellmyimages.jobs.manager import job_manager

    try:
        job = job_manager.get_job(job_id)
    except JobNotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    detail = job_summary(job)
    detail["events"] = [
        {
            "at": event.created_at.isoformat(),
            "event": event.event,
            "from": event.from_status,
            "to": event.to_status,
            "actor": event.actor,
            "reason": event.reason,
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
            f"{event['at'][:19]}  {event['event']:<24} {change:<32} {event['actor']:<16} {event['reason']}"
        )


def job_summary(job):
    return {
        "job_id": str(job.job_id),
        "status": job.status,
        "payment_status": job.payment_status,
        "resolution": job.resolution,
        "source": job.source_ref,
        "source_size": f"{job.source_width}x{job.source_height}",
        "price": str(job.customer_price),
        "currency": job.currency,
        "provider_cost": str(job.provider_cost),
        "credits_required": str(job.credits_required),
        "provider": job.provider,
        "provider_job_id": job.provider_job_id,
        "created_at": job.created_at.isoformat(),
        "paid_at": job.paid_at.isoformat() if job.paid_at else None,
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        "failed_at": job.failed_at.isoformat() if job.failed_at else None,
        "failure_code": job.failure_code,
        "output_size": f"{job.output_width}x{job.output_height}" if job.output_width else None,
        "download_expires_at": (
            job.download_expires_at.isoformat() if job.download_expires_at else None
        ),
        "download_count": job.download_count,
        "attempt_count": job.attempt_count,
    }
