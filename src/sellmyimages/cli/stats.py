"""`smi stats`: the analytics page's figures as tables in the terminal."""

import json
from decimal import ROUND_HALF_UP, Decimal

import click

from sellmyimages.cli import fail, main, setup_django

CENT = Decimal("0.01")


def money(value):
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


@main.command()
@click.option(
    "--days",
    default=30,
    show_default=True,
    type=int,
    help="Number of UTC days to report, today included.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def stats(days, as_json):
    """Show revenue, costs, margin, conversion, delivery times and failures."""
    setup_django()
    from sellmyimages.analytics.report import build_report

    try:
        report = build_report(days)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    print_report(report)


def print_report(report):
    from rich.console import Console
    from rich.table import Table

    from sellmyimages.analytics.report import format_duration

    console = Console()
    console.print(
        f"Sales from {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC, "
        f"in {report.currency.upper()}, by day of payment."
    )

    summary = Table("figure", "value", title="Summary")
    totals = report.totals
    for label, value in (
        ("revenue", totals.revenue),
        ("provider cost", totals.provider_cost),
        ("payment fees", totals.payment_fees),
        ("refunds", totals.refunds),
        ("margin", totals.margin),
    ):
        summary.add_row(label, money(value))
    summary.add_row("jobs paid", str(totals.jobs_paid))
    conversion = report.conversion_percent
    summary.add_row(
        "conversion created -> paid",
        (
            "-"
            if conversion is None
            else f"{conversion}% ({report.jobs_created_and_paid} of {report.jobs_created})"
        ),
    )
    summary.add_row(
        "payment to delivery, average", format_duration(report.delivery_average_seconds)
    )
    summary.add_row(
        "payment to delivery, p95",
        f"{format_duration(report.delivery_p95_seconds)} ({len(report.delivery_seconds)} jobs)",
    )
    console.print(summary)

    by_day = money_table("By day (UTC)", "day", extra_column="created")
    for row in report.by_day:
        add_money_row(by_day, row, extra=str(row.jobs_created))
    console.print(by_day)

    by_resolution = money_table("By resolution", "resolution")
    for row in report.by_resolution:
        add_money_row(by_resolution, row)
    console.print(by_resolution)

    failures = Table("reason", "failures", title="Most common failure reasons")
    for reason, count in report.failure_reasons:
        failures.add_row(reason, str(count))
    console.print(failures)


def money_table(title, first_column, extra_column=None):
    from rich.table import Table

    columns = [first_column]
    if extra_column:
        columns.append(extra_column)
    columns += ["paid", "revenue", "provider cost", "fees", "refunds", "margin"]
    table = Table(title=title)
    for index, name in enumerate(columns):
        table.add_column(name, justify="left" if index == 0 else "right")
    return table


def add_money_row(table, row, extra=None):
    cells = [row.label]
    if extra is not None:
        cells.append(extra)
    cells += [
        str(row.jobs_paid),
        money(row.revenue),
        money(row.provider_cost),
        money(row.payment_fees),
        money(row.refunds),
        money(row.margin),
    ]
    table.add_row(*cells)
