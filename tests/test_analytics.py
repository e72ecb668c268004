"""Sales figures: money sums, days, conversion, delivery times, failures, page, CLI."""

import base64
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from PIL import Image

from sellmyimages.analytics.report import build_report, percentile
from sellmyimages.cli import main
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Job, JobEvent
from tests.factories import force_status, make_job

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def image(catalog):
    return catalog("photo_cat_chelsea_451x300.png")


def sale(image, *, price, cost="0", fee=None, refund=None, resolution="4x", path=()):
    """Create a paid job with the given money figures, walked along `path`."""
    job = make_job(image, resolution=resolution, email="")
    job_manager.update_cost_data(
        job.job_id,
        customer_price=price,
        provider_cost=cost,
        payment_fee=fee,
        refund_amount=refund,
    )
    return force_status(job, "pending", *path)


def move(job, **times):
    """Set timestamps of a job, to place it on an earlier day."""
    Job.objects.filter(pk=job.pk).update(**times)


def test_money_totals_are_exact_decimals(image):
    sale(
        image,
        price="10.00",
        cost="1.2345",
        fee="0.59",
        path=["processing", "completed"],
    )
    sale(
        image,
        price="20.00",
        cost="2.0000",
        fee="0.88",
        refund="20.00",
        resolution="8x",
        path=["processing", "failed"],
    )
    # Failed before reaching a provider, so its provider cost is not counted.
    sale(image, price="5.00", cost="0.5000", fee="0.30", refund="5.00", path=["failed"])
    make_job(image)  # never paid
    old = sale(image, price="99.00", path=["processing", "completed"])
    move(old, paid_at=timezone.now() - timedelta(days=40))

    totals = build_report(30).totals

    assert totals.jobs_paid == 3
    assert totals.revenue == Decimal("35.00")
    assert totals.provider_cost == Decimal("3.2345")
    assert totals.payment_fees == Decimal("1.77")
    assert totals.refunds == Decimal("25.00")
    assert totals.margin == Decimal("4.9955")
    for value in (totals.revenue, totals.provider_cost, totals.margin):
        assert isinstance(value, Decimal)


def test_sum_of_many_cents_is_exact(image):
    for _ in range(30):
        sale(image, price="0.10", cost="0.0333", path=["processing", "completed"])
    totals = build_report(1).totals
    assert totals.revenue == Decimal("3.00")
    assert totals.provider_cost == Decimal("0.9990")
    assert totals.margin == Decimal("2.0010")


def test_rows_by_day_cover_every_day(image):
    today = sale(image, price="10.00", path=["processing", "completed"])
    earlier = sale(image, price="7.50", path=["processing", "completed"])
    move(earlier, paid_at=timezone.now() - timedelta(days=2))
    report = build_report(7)

    assert len(report.by_day) == 7
    by_label = {row.label: row for row in report.by_day}
    today_label = timezone.now().astimezone(UTC).date().isoformat()
    two_days_ago = (
        (timezone.now() - timedelta(days=2)).astimezone(UTC).date().isoformat()
    )
    assert by_label[today_label].revenue == Decimal("10.00")
    assert by_label[two_days_ago].revenue == Decimal("7.50")
    assert by_label[two_days_ago].jobs_paid == 1
    # Both jobs were created today, whatever day they were paid.
    assert by_label[today_label].jobs_created == 2
    assert sum(row.revenue for row in report.by_day) == report.totals.revenue
    empty = [
        row for row in report.by_day if row.label not in (today_label, two_days_ago)
    ]
    assert all(row.revenue == 0 and row.jobs_paid == 0 for row in empty)
    assert today.status == "completed"


def test_rows_by_resolution(image):
    sale(image, price="10.00", cost="1.00", path=["processing", "completed"])
    sale(image, price="12.00", cost="1.00", path=["processing", "completed"])
    sale(
        image,
        price="30.00",
        cost="4.00",
        resolution="8x",
        path=["processing", "completed"],
    )
    rows = {row.label: row for row in build_report(30).by_resolution}
    assert set(rows) == {"4x", "8x"}
    assert rows["4x"].jobs_paid == 2
    assert rows["4x"].revenue == Decimal("22.00")
    assert rows["4x"].margin == Decimal("20.00")
    assert rows["8x"].margin == Decimal("26.00")


def test_conversion_from_created_to_paid(image):
    for _ in range(3):
        sale(image, price="1.00")
    make_job(image)
    report = build_report(30)
    assert report.jobs_created == 4
    assert report.jobs_created_and_paid == 3
    assert report.conversion_percent == Decimal("75.0")


def test_conversion_without_jobs_is_none():
    report = build_report(30)
    assert report.conversion_percent is None
    assert report.delivery_p95_seconds is None
    assert report.as_dict()["conversion"]["percent"] is None


def test_delivery_average_and_p95(image):
    start = timezone.now() - timedelta(hours=3)
    for minutes in range(1, 21):
        job = sale(image, price="1.00", path=["processing", "completed"])
        move(job, paid_at=start, completed_at=start + timedelta(minutes=minutes))
    report = build_report(1)
    assert len(report.delivery_seconds) == 20
    assert report.delivery_average_seconds == pytest.approx(630.0)
    # Interpolated between the 19th and 20th values, as percentile_cont does.
    assert report.delivery_p95_seconds == pytest.approx(1143.0)


def test_delivery_counts_from_payment_to_email(image):
    job = make_job(image, email="customer@example.com")
    job = force_status(job, "pending", "processing", "completed")
    paid_at = timezone.now() - timedelta(minutes=30)
    move(job, paid_at=paid_at, completed_at=paid_at + timedelta(seconds=10))
    job_manager.record_event(job.job_id, "email_sent", data={"kind": "download_ready"})
    JobEvent.objects.filter(job=job, event="email_sent").update(
        created_at=paid_at + timedelta(seconds=45)
    )
    waiting = make_job(image, email="other@example.com")
    force_status(waiting, "pending", "processing", "completed")  # no email yet

    report = build_report(1)
    assert report.delivery_seconds == [pytest.approx(45.0)]


def test_failure_reasons_most_common_first(image):
    for code in [
        "source_missing",
        "provider_timeout",
        "source_missing",
        "source_missing",
    ]:
        job = make_job(image)
        job_manager.mark_failed(job.job_id, code)
    assert build_report(30).failure_reasons == [
        ("source_missing", 3),
        ("provider_timeout", 1),
    ]


def test_percentile_interpolates():
    assert percentile([], 95) is None
    assert percentile([4.0], 95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)


@pytest.mark.parametrize("days", [0, -3, 4000])
def test_days_out_of_range_rejected(days):
    with pytest.raises(ValueError, match="days="):
        build_report(days)


def test_period_starts_at_utc_midnight():
    report = build_report(3, now=NOW)
    assert report.since == datetime(2026, 3, 13, tzinfo=UTC)
    assert report.until == NOW
    assert [row.label for row in report.by_day] == [
        "2026-03-13",
        "2026-03-14",
        "2026-03-15",
    ]


def admin_client(**permissions):
    user = get_user_model().objects.create_user("staff", "staff@example.com", "pw")
    user.is_staff = True
    user.save()
    if permissions.get("view"):
        user.user_permissions.add(
            Permission.objects.get(
                codename="view_salesreport", content_type__app_label="analytics"
            )
        )
    client = Client()
    client.force_login(user)
    return client


def test_admin_page_shows_tables_and_chart(image):
    sale(image, price="12.34", cost="1.00", path=["processing", "completed"])
    job = make_job(image)
    job_manager.mark_failed(job.job_id, "source_missing")
    response = admin_client(view=True).get("/admin/analytics/salesreport/?days=7")

    assert response.status_code == 200
    page = response.content.decode()
    assert "12.34" in page
    assert "11.34" in page  # the margin
    assert "source_missing" in page
    assert page.count("<tr><td>20") >= 7  # one row per day
    found = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert found
    with Image.open(io.BytesIO(base64.b64decode(found.group(1)))) as chart:
        assert chart.format == "PNG"
        assert chart.width >= 800
    # Nothing loads from another host: no CDN scripts, styles or images.
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources
    assert all(not s.startswith(("http:", "https:", "//")) for s in sources)


def test_admin_page_needs_permission():
    assert admin_client().get("/admin/analytics/salesreport/").status_code == 403
    anonymous = Client().get("/admin/analytics/salesreport/")
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]


def test_admin_index_links_to_report():
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    assert "/admin/analytics/salesreport/" in client.get("/admin/").content.decode()
    assert client.get("/admin/analytics/salesreport/1/change/").status_code == 404


def test_stats_command_json(image):
    sale(
        image,
        price="10.00",
        cost="1.5000",
        fee="0.40",
        path=["processing", "completed"],
    )
    result = CliRunner().invoke(main, ["stats", "--days", "7", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["days"] == 7
    assert len(figures["by_day"]) == 7
    assert figures["totals"]["revenue"] == "10.00"
    assert figures["totals"]["margin"] == "8.1000"
    assert figures["conversion"]["percent"] == "100.0"
    assert figures["by_resolution"][0]["label"] == "4x"


def test_stats_command_table(image):
    sale(
        image,
        price="10.00",
        cost="1.5000",
        fee="0.40",
        path=["processing", "completed"],
    )
    result = CliRunner().invoke(main, ["stats", "--days", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "margin" in result.output
    assert "8.10" in result.output
    assert "By resolution" in result.output


def test_stats_command_rejects_bad_days():
    result = CliRunner().invoke(main, ["stats", "--days", "0"])
    assert result.exit_code == 2
    assert "days=0" in result.output
