"""`smi payments`: check the shop's payments against Stripe."""

import json

import click

from sellmyimages.cli import EXIT_FAILED, fail, main, setup_django


@main.group()
def payments():
    """Check payments against the payment provider."""


@payments.command("reconcile")
@click.option(
    "--days",
    default=7,
    show_default=True,
    type=click.IntRange(1, 90),
    help="How many days back to compare, by creation time.",
)
@click.option(
    "--dry-run", is_flag=True, help="Report what would change without changing it."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def reconcile_command(days, dry_run, as_json):
    """Compare jobs with Stripe and repair jobs whose webhook never arrived.

    Safe to run at any time and more than once: every repair takes the
    same path a webhook takes, and a repaired job is left alone.
    """
    setup_django()
    from django.conf import settings

    from sellmyimages.payments.backends.base import PaymentError
    from sellmyimages.payments.reconcile import reconcile

    if settings.SMI_PAYMENT_PROVIDER != "stripe":
        fail(
            f"SMI_PAYMENT_PROVIDER is {settings.SMI_PAYMENT_PROVIDER!r}; reconciling "
            "needs Stripe, so set STRIPE_SECRET_KEY."
        )
    try:
        findings = reconcile(days, dry_run=dry_run)
    except PaymentError as exc:
        fail(str(exc), EXIT_FAILED)
    changed = sum(finding.changed for finding in findings)
    if as_json:
        click.echo(json.dumps([finding.as_dict() for finding in findings], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    title = (
        f"Stripe reconciliation, last {days} day(s){' (dry run)' if dry_run else ''}"
    )
    table = Table("kind", "stripe id", "job id", "found", "action", title=title)
    for finding in findings:
        table.add_row(
            finding.kind,
            finding.stripe_id,
            finding.job_id,
            finding.found,
            finding.action,
        )
    console = Console(width=200)
    console.print(table)
    verb = "would change" if dry_run else "changed"
    console.print(f"{len(findings)} checked, {changed} {verb}.")
