"""Time every maintenance sweep's query on a table of 1,000,000 jobs, with its plan.

    .venv/bin/python bench/maintenance_queries.py [--jobs 1000000]
        [--database-url postgres://postgres@127.0.0.1:5432/smi_bench_queries]

The script drops and recreates the database in --database-url, migrates it,
fills jobs_job with generated rows spread over 90 days (mostly old
completed jobs whose files are already cleaned up, as a shop that has run
for months has), runs ANALYZE, then for each query in
sellmyimages.maintenance.sweeps.maintenance_queries() prints the median of
five timed runs at the sweeps' batch size and the EXPLAIN ANALYZE plan. It
exits with status 1 if any plan reads jobs_job with a sequential scan.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]

# SQL for each column the generator sets; `r` is a random number per row,
# `n` the row number and `status` the row's status, both from the FROM clause.
GENERATED = {
    "job_id": "gen_random_uuid()",
    "source_kind": "'catalog'",
    "source_ref": "'photo.jpg'",
    "source_path": "'/srv/smi/catalog/photo.jpg'",
    "source_width": "1200",
    "source_height": "800",
    "source_format": "'JPEG'",
    "resolution": "'4x'",
    "email": "'buyer' || n || '@example.com'",
    "status": "status",
    "payment_status": (
        "CASE status WHEN 'awaiting_payment' THEN 'unpaid' WHEN 'abandoned' THEN 'unpaid' "
        "WHEN 'failed' THEN 'refunded' ELSE 'paid' END"
    ),
    "created_at": "created",
    "updated_at": "created + interval '2 minutes'",
    "paid_at": "CASE WHEN status IN ('awaiting_payment', 'abandoned') THEN NULL ELSE created END",
    "completed_at": "CASE status WHEN 'completed' THEN created + interval '1 minute' END",
    "failed_at": "CASE status WHEN 'failed' THEN created + interval '1 minute' END",
    "abandoned_at": "CASE status WHEN 'abandoned' THEN created + interval '24 hours' END",
    "refunded_at": "CASE status WHEN 'failed' THEN created + interval '2 minutes' END",
    "download_expires_at": "CASE status WHEN 'completed' THEN created + interval '25 hours' END",
    "download_count": "CASE WHEN r < 0.7 THEN 1 ELSE 0 END",
    "download_token_hash": "CASE status WHEN 'completed' THEN md5(n::text) || md5('t' || n) END",
    # Files are kept only for the last ten days; older ones were cleaned up.
    "output_path": (
        "CASE WHEN status IN ('completed', 'failed') AND created > now() - interval '10 days' "
        "THEN '/srv/smi/outputs/' || n || '.png' ELSE '' END"
    ),
    "lease_expires_at": "CASE status WHEN 'processing' THEN now() + interval '4 minutes' END",
    "provider": "CASE WHEN status IN ('processing', 'completed', 'failed') THEN 'local' ELSE '' END",
    "currency": "'usd'",
    "customer_price": "12.50",
    "payment_provider": "'local'",
}

STATUS_BY_DRAW = """
    CASE
        WHEN r < 0.85 THEN 'completed'
        WHEN r < 0.90 THEN 'failed'
        WHEN r < 0.98 THEN 'abandoned'
        WHEN r < 0.995 THEN 'awaiting_payment'
        WHEN r < 0.998 THEN 'pending'
        ELSE 'processing'
    END
"""


def setup_database(url, name):
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def column_values(Job):
    """Return (columns, SQL expressions, parameters) for every column of jobs_job."""
    from django.db import connection

    columns, expressions, parameters = [], [], []
    for field in Job._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(field.column)
        if field.name in GENERATED:
            expressions.append(GENERATED[field.name])
        elif field.null:
            expressions.append("NULL")
        else:
            expressions.append("%s")
            parameters.append(field.get_db_prep_save(field.get_default(), connection=connection))
    return columns, expressions, parameters


def fill_jobs(count):
    from django.db import connection

    from sellmyimages.jobs.models import Job

    columns, expressions, parameters = column_values(Job)
    sql = f"""
        INSERT INTO jobs_job ({", ".join(columns)})
        SELECT {", ".join(expressions)}
        FROM (
            SELECT n, r, {STATUS_BY_DRAW} AS status,
                   now() - (random() * interval '90 days') AS created
            FROM (SELECT n, random() AS r FROM generate_series(1, %s) AS n) AS draws
        ) AS rows
    """
    # The newest rows decide what is due, so the unsettled ones are recent.
    settle = """
        UPDATE jobs_job SET created_at = now() - (random() * interval '3 hours'),
                            updated_at = now() - (random() * interval '3 hours')
        WHERE status IN ('awaiting_payment', 'pending', 'processing')
          AND random() < 0.9
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [*parameters, count])
        cursor.execute(settle)
        cursor.execute("ANALYZE jobs_job")


def time_query(queryset, batch, runs=5):
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = len(list(queryset[:batch]))
        timings.append(time.perf_counter() - started)
    return rows, statistics.median(timings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="Rows to generate.")
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/smi_bench_queries",
        help="PostgreSQL database to drop, recreate and fill.",
    )
    options = parser.parse_args()

    name = options.database_url.rsplit("/", 1)[1]
    os.environ["DATABASE_URL"] = options.database_url
    os.environ.setdefault("SMI_DATA_DIR", tempfile.mkdtemp(prefix="smi-bench-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "sellmyimages.settings"
    sys.path.insert(0, str(REPO / "src"))
    setup_database(options.database_url, name)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from sellmyimages.maintenance.sweeps import maintenance_queries

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    fill_jobs(options.jobs)
    print(f"Filled jobs_job with {options.jobs:,} rows in {time.perf_counter() - started:.1f} s.")

    batch = settings.SMI_SWEEP_BATCH
    queries = maintenance_queries(timezone.now())
    plans = {}
    print(f"\n{'query':<34} {'rows':>6} {'median ms':>10}  index")
    sequential = []
    for label, queryset in queries.items():
        rows, seconds = time_query(queryset, batch)
        plan = queryset[:batch].explain(analyze=True, buffers=True)
        plans[label] = plan
        uses_index = "Seq Scan on jobs_job" not in plan
        if not uses_index:
            sequential.append(label)
        print(f"{label:<34} {rows:>6} {seconds * 1000:>10.2f}  {'yes' if uses_index else 'NO'}")

    for label, plan in plans.items():
        print(f"\n== {label}\n{plan}")
    if sequential:
        print(f"\nSequential scans of jobs_job: {', '.join(sequential)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
