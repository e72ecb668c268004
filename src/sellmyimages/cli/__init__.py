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
@click.option(
    "--scheduler/--no-scheduler",
    default=True,
    show_default=True,
    help="Also start `smi scheduler`; with several machines, one scheduler leads.",
)
def serve(host, port, web_workers, task_workers, scheduler):
    """Prepare the database and serve the shop with gunicorn plus task workers."""
    setup_django()
    from django.conf import settings

    from sellmyimages.server import run_gunicorn

    migrate()
    # This command starts every process of the shop, so the metric files
    # of earlier runs belong to no running process.
    from sellmyimages.observability.metrics import clear_metrics_dir

    clear_metrics_dir(keep_pid=os.getpid())
    from sellmyimages.payments.backends import describe_payment_setup

    click.echo(describe_payment_setup())
    from sellmyimages.cli.ops import start_background_processes

    workers = start_background_processes(task_workers, with_scheduler=scheduler)
    click.echo(f"Serving on http://{host}:{port}/ with {task_workers} task worker(s).")
    try:
        run_gunicorn(host=host, port=port, workers=web_workers)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)


@main.command()
@click.argument("image", required=False, type=click.Path(dir_okay=False))
@click.option("--resolution", default="4x", show_default=True, help="4x or 8x.")
@click.option("--verbose", is_flag=True, help="Also print the service's log lines.")
def demo(image, resolution, verbose):
    """Buy, upscale and download one image on this machine, printing each step."""
    setup_django()
    if not verbose:
        import logging

        logging.getLogger().setLevel(logging.WARNING)
    from sellmyimages.demo import DemoFailed, run_demo

    try:
        ok = run_demo(image, resolution, echo=click.echo)
    except DemoFailed as exc:
        fail(str(exc), exc.exit_code)
    sys.exit(0 if ok else EXIT_FAILED)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def manage(ctx):
    """Run a Django management command, e.g. `smi manage createsuperuser`."""
    setup_django()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["smi manage", *ctx.args])


# Subcommand groups live in their own modules; importing them registers them.
from sellmyimages.cli import jobs as _jobs  # noqa: E402,F401
from sellmyimages.cli import ops as _ops  # noqa: E402,F401
from sellmyimages.cli import payments as _payments  # noqa: E402,F401
from sellmyimages.cli import stats as _stats  # noqa: E402,F401
