"""The `smi` command: serve the shop, run workers, run a demo purchase, inspect jobs."""

import json
import os
import signal
import subprocess
import sys

import click

EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_FAILED = 1


def setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sellmyimages.settings")
    import django

    django.setup()


def migrate(verbosity=0):
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=verbosity)


def fail(message, code=EXIT_BAD_INPUT):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
def main():
    """Sell My Images: sell AI-upscaled copies of your images."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--web-workers", default=2, show_default=True, type=int, help="Web server processes."
)
@click.option(
    "--workers",
    "task_workers",
    default=1,
    show_default=True,
    type=int,
    help="Task worker processes started beside the web server (0 for none).",
)
def serve(host, port, web_workers, task_workers):
    """Prepare the database and serve the shop with gunicorn plus task workers."""
    setup_django()
    from django.conf import settings

    from sellmyimages.server import run_gunicorn

    migrate()
    if settings.SMI_PAYMENT_PROVIDER == "local":
        click.echo(
            "Payments use the local test checkout: no money moves. "
            "Configure a payment provider to take real payments."
        )
    workers = [
        subprocess.Popen([sys.executable, "-m", "sellmyimages.cli", "worker"])
        for _ in range(task_workers)
    ]
    click.echo(f"Serving on http://{host}:{port}/ with {task_workers} task worker(s).")
    try:
        run_gunicorn(host=host, port=port, workers=web_workers)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)


@main.command()
@click.option("--queue", default="*", show_default=True, help="Queue names, comma-separated.")
@click.option(
    "--interval", default=1.0, show_default=True, type=float, help="Seconds between polls when idle."
)
@click.option("--batch", is_flag=True, help="Run every ready task, then exit.")
@click.option("--max-tasks", type=int, default=None, help="Exit after this many tasks.")
def worker(queue, interval, batch, max_tasks):
    """Run background tasks: upscaling, emails, refunds."""
    setup_django()
    from django.core.management import call_command

    args = ["db_worker", "--queue-name", queue, "--interval", str(interval)]
    if batch:
        args.append("--batch")
    if max_tasks is not None:
        args += ["--max-tasks", str(max_tasks)]
    call_command(*args)


@main.command()
@click.argument("image", required=False, type=click.Path(dir_okay=False))
@click.option("--resolution", default="4x", show_default=True, help="4x or 8x.")
def demo(image, resolution):
    """Buy, upscale and download one image on this machine, printing each step."""
    setup_django()
    from sellmyimages.demo import DemoFailed, run_demo

    try:
        ok = run_demo(image, resolution, echo=click.echo)
    except DemoFailed as exc:
        fail(str(exc), exc.exit_code)
    sys.exit(0 if ok else EXIT_FAILED)


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


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def manage(ctx):
    """Run a Django management command, e.g. `smi manage createsuperuser`."""
    setup_django()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["smi manage", *ctx.args])


if __name__ == "__main__":
    main()
