"""Sales figures for the last N days, shared by the admin page and `smi stats`.

Money figures are attributed to the UTC day on which the job was paid, so
a day's margin is what that day's sales earned once their refunds are
known. A refund issued later changes the figures of the day of the sale,
not of the day of the refund. All money is Decimal, summed by the database.

- revenue: customer_price of jobs paid in the period.
- provider cost: provider_cost of those jobs that reached processing,
  because a job that failed before it reached a provider cost nothing.
- payment fees: Job.payment_fee, as recorded by the payment provider.
- refunds: Job.refund_amount.
- margin: revenue - provider cost - payment fees - refunds.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import (
    BooleanField,
    Case,
    Count,
    DecimalField,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from sellmyimages.jobs.models import Job, JobEvent, Status

MAX_DAYS = 3660
TOP_FAILURE_REASONS = 10
ZERO = Decimal("0")
CENT = Decimal("0.01")
COST_PLACES = Decimal("0.0001")  # Job.provider_cost has 4 decimal places
# Wide enough for the sum of many 12-digit prices; 4 places keep provider
# costs exact.
SUM_FIELD = DecimalField(max_digits=20, decimal_places=4)


@dataclass
class MoneyRow:
    """Sales figures of one group of paid jobs (a day, a resolution, or all)."""

    label: str
    jobs_paid: int = 0
    revenue: Decimal = Decimal("0.00")
    provider_cost: Decimal = Decimal("0.0000")
    payment_fees: Decimal = Decimal("0.00")
    refunds: Decimal = Decimal("0.00")
    # Jobs created in the group; set for days only, since it is by creation date.
    jobs_created: int | None = None

    @property
    def margin(self):
        return self.revenue - self.provider_cost - self.payment_fees - self.refunds

    def as_dict(self):
        row = {
            "label": self.label,
            "jobs_paid": self.jobs_paid,
            "revenue": str(self.revenue),
            "provider_cost": str(self.provider_cost),
            "payment_fees": str(self.payment_fees),
            "refunds": str(self.refunds),
            "margin": str(self.margin),
        }
        if self.jobs_created is not None:
            row["jobs_created"] = self.jobs_created
        return row


@dataclass
class Report:
    """Every figure of the analytics page for one period and currency."""

    since: datetime
    until: datetime
    days: int
    currency: str
    totals: MoneyRow
    by_day: list[MoneyRow]
    by_resolution: list[MoneyRow]
    jobs_created: int
    jobs_created_and_paid: int
    delivery_seconds: list[float] = field(repr=False)
    failure_reasons: list[tuple[str, int]]

    @property
    def conversion_percent(self):
        """Return the share of jobs created in the period that were paid, or None."""
        if not self.jobs_created:
            return None
        share = Decimal(self.jobs_created_and_paid) * 100 / Decimal(self.jobs_created)
        return share.quantize(Decimal("0.1"))

    @property
    def delivery_average_seconds(self):
        if not self.delivery_seconds:
            return None
        return sum(self.delivery_seconds) / len(self.delivery_seconds)

    @property
    def delivery_p95_seconds(self):
        return percentile(self.delivery_seconds, 95)

    def as_dict(self):
        conversion = self.conversion_percent
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "days": self.days,
            "currency": self.currency,
            "totals": self.totals.as_dict(),
            "by_day": [row.as_dict() for row in self.by_day],
            "by_resolution": [row.as_dict() for row in self.by_resolution],
            "conversion": {
                "jobs_created": self.jobs_created,
                "jobs_paid": self.jobs_created_and_paid,
                "percent": None if conversion is None else str(conversion),
            },
            "delivery": {
                "jobs": len(self.delivery_seconds),
                "average_seconds": round_or_none(self.delivery_average_seconds),
                "p95_seconds": round_or_none(self.delivery_p95_seconds),
            },
            "failure_reasons": [
                {"reason": reason, "count": count}
                for reason, count in self.failure_reasons
            ],
        }


def format_duration(seconds):
    """Return seconds as "1 h 02 min", "3 min 05 s" or "4.2 s"; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s"


def round_or_none(value, places=1):
    return None if value is None else round(value, places)


def percentile(values, percent):
    """Return the percentile of `values` by linear interpolation, or None if empty.

    This is the definition PostgreSQL's percentile_cont uses, so the figure
    does not depend on the database.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * percent / 100
    lower = int(rank)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)


def period(days, now=None):
    """Return (since, until): the start of the UTC day days-1 days ago, and now."""
    if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days={days!r} is not a whole number from 1 to {MAX_DAYS}.")
    now = now or timezone.now()
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1), now


def money_sum(name, condition=None):
    return Coalesce(Sum(name, filter=condition), Value(ZERO), output_field=SUM_FIELD)


def money_aggregates():
    return {
        "jobs_paid": Count("id"),
        "revenue": money_sum("customer_price"),
        "provider_cost": money_sum(
            "provider_cost", Q(processing_started_at__isnull=False)
        ),
        "payment_fees": money_sum("payment_fee"),
        "refunds": money_sum("refund_amount"),
    }


def money_row(label, values):
    # Each sum is rounded to the decimal places of its field. PostgreSQL
    # sums decimals exactly, but SQLite keeps them as doubles, and rounding
    # removes the double's error, which stays far below half a cent.
    return MoneyRow(
        label=label,
        jobs_paid=values["jobs_paid"],
        revenue=values["revenue"].quantize(CENT),
        provider_cost=values["provider_cost"].quantize(COST_PLACES),
        payment_fees=values["payment_fees"].quantize(CENT),
        refunds=values["refunds"].quantize(CENT),
    )


def build_report(days=30, *, now=None, currency=None):
    """Compute the report for the `days` UTC days up to now, today included."""
    since, until = period(days, now)
    currency = (currency or settings.SMI_CURRENCY).lower()
    paid = Job.objects.filter(
        paid_at__gte=since, paid_at__lt=until, currency=currency
    ).order_by()
    created = Job.objects.filter(created_at__gte=since, created_at__lt=until).order_by()

    return Report(
        since=since,
        until=until,
        days=days,
        currency=currency,
        totals=money_row("total", paid.aggregate(**money_aggregates())),
        by_day=rows_by_day(paid, created, since, days),
        by_resolution=rows_by_resolution(paid),
        jobs_created=created.count(),
        jobs_created_and_paid=created.filter(paid_at__isnull=False).count(),
        delivery_seconds=delivery_durations(paid),
        failure_reasons=failure_reasons(since, until),
    )


def rows_by_day(paid, created, since, days):
    """Return one row per day of the period, days without sales included."""
    utc_day = {"tzinfo": UTC}
    sales = {
        values["day"]: values
        for values in paid.annotate(day=TruncDate("paid_at", **utc_day))
        .values("day")
        .annotate(**money_aggregates())
    }
    created_per_day = dict(
        created.annotate(day=TruncDate("created_at", **utc_day))
        .values_list("day")
        .annotate(count=Count("id"))
    )
    rows = []
    first_day = since.date()
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        values = sales.get(day)
        row = (
            money_row(day.isoformat(), values) if values else MoneyRow(day.isoformat())
        )
        row.jobs_created = created_per_day.get(day, 0)
        rows.append(row)
    return rows


def rows_by_resolution(paid):
    grouped = (
        paid.values("resolution").annotate(**money_aggregates()).order_by("resolution")
    )
    return [money_row(values["resolution"], values) for values in grouped]


def delivery_durations(paid):
    """Return seconds from payment to delivery for the paid jobs delivered so far.

    A job is delivered when the first download-ready email went out or,
    for a job without an email address, when it completed.
    """
    first_email = (
        JobEvent.objects.filter(
            job=OuterRef("pk"), event="email_sent", data__kind="download_ready"
        )
        .order_by("created_at")
        .values("created_at")[:1]
    )
    rows = (
        paid.filter(status=Status.COMPLETED, completed_at__isnull=False)
        .annotate(
            emailed_at=Subquery(first_email),
            has_email=Case(
                When(email="", then=Value(False)),
                default=Value(True),
                output_field=BooleanField(),
            ),
        )
        .values_list("paid_at", "completed_at", "emailed_at", "has_email")
    )
    durations = []
    for paid_at, completed_at, emailed_at, has_email in rows:
        delivered_at = emailed_at if has_email else completed_at
        if delivered_at is not None:
            durations.append(max(0.0, (delivered_at - paid_at).total_seconds()))
    return durations


def failure_reasons(since, until):
    """Return the most common failure reasons of the period, with their counts.

    Every move to failed counts, so a job that failed, was retried and
    failed again counts twice.
    """
    grouped = (
        JobEvent.objects.filter(
            to_status=Status.FAILED, created_at__gte=since, created_at__lt=until
        )
        .order_by()
        .values("reason")
        .annotate(count=Count("id"))
        .order_by("-count", "reason")[:TOP_FAILURE_REASONS]
    )
    return [(values["reason"] or "(none)", values["count"]) for values in grouped]
