"""Measure signed Stripe webhook ingestion beside a trivial endpoint of the same server.

For each database (the embedded SQLite default and PostgreSQL), it starts
gunicorn on 127.0.0.1 with a fresh data folder, seeds jobs awaiting
payment, then sends, at a fixed concurrency over keep-alive connections:

- GET /healthz, the baseline, and
- POST /webhooks/stripe with a signed checkout.session.completed event
  for a different job each time, which verifies the signature, stores
  the event, records the payment and enqueues the upscale.

It prints requests per second and p50/p99 latency for both, and the
ratio of webhook throughput to the baseline. It is a script, not a test:

    .venv/bin/python bench/webhook_bench.py [--requests 1000] [--concurrency 8]

PostgreSQL is skipped when nothing listens on 127.0.0.1:5432. The bench
creates and drops the database smi_webhook_bench there.
"""

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.client import HTTPConnection
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench"
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PG_BENCH_DB = "smi_webhook_bench"

SEED = """
import json, sys, uuid
import django
django.setup()
from sellmyimages.jobs.models import Job
count = int(sys.argv[1])
jobs = [
    Job(source_kind="catalog", source_ref="bench.png", source_path="/none/bench.png",
        source_width=400, source_height=300, resolution="4x", email="bench@example.com",
        payment_provider="stripe", currency="usd", customer_price="1.00",
        checkout_session_id=f"cs_test_bench_{i}")
    for i in range(count)
]
Job.objects.bulk_create(jobs, batch_size=500)
print(json.dumps([[str(j.job_id), j.checkout_session_id]
                  for j in Job.objects.order_by("id")]))
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_available():
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def reset_postgres_database(drop_only=False):
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)")
        if not drop_only:
            connection.execute(f"CREATE DATABASE {PG_BENCH_DB}")


def shop_env(data_dir, database_url, conn_max_age):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMI_", "STRIPE_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        SMI_DATA_DIR=str(data_dir),
        STRIPE_SECRET_KEY="sk_test_bench",
        STRIPE_WEBHOOK_SECRET=SECRET,
        # Nothing in this run calls Stripe; a closed loopback port makes
        # sure nothing could.
        SMI_STRIPE_API_BASE="http://127.0.0.1:9",
        SMI_LOG_LEVEL="WARNING",
        SMI_DB_CONN_MAX_AGE=str(conn_max_age),
        DJANGO_SETTINGS_MODULE="sellmyimages.settings",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def signed_event(job_id, session_id):
    event = {
        "id": f"evt_bench_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "livemode": False,
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "status": "complete",
                "payment_status": "paid",
                "amount_total": 100,
                "currency": "usd",
                "metadata": {"job_id": job_id},
                "client_reference_id": job_id,
                "customer_details": {"email": "bench@example.com"},
                "payment_intent": f"pi_bench_{uuid.uuid4().hex[:16]}",
            }
        },
    }
    body = json.dumps(event).encode()
    timestamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return body, f"t={timestamp},v1={digest.hexdigest()}"


def run_load(port, requests, concurrency):
    """Send each (method, path, body, headers); return latencies, seconds, errors."""
    latencies = []
    errors = []
    lock = threading.Lock()
    queue = list(reversed(requests))

    def worker():
        connection = HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                method, path, body, headers = queue.pop()
            started = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    errors.append(response.status)
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors


def summarize(latencies, seconds):
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "rps": len(ordered) / seconds,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
    }


def wait_for_server(port, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {process.returncode}")
        try:
            connection = HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not respond on port {port} within {timeout} s")


def bench_database(label, database_url, args):
    with tempfile.TemporaryDirectory(prefix="smi-webhook-bench-") as tmp:
        env = shop_env(Path(tmp) / "data", database_url, args.conn_max_age)
        python = sys.executable
        subprocess.run(
            [python, "-m", "sellmyimages.cli", "manage", "migrate", "-v", "0"],
            env=env,
            check=True,
            cwd=REPO,
        )
        seeded = subprocess.run(
            [python, "-c", SEED, str(args.requests)],
            env=env,
            check=True,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        jobs = json.loads(seeded.stdout)
        port = free_port()
        server = subprocess.Popen(
            [
                python,
                "-m",
                "gunicorn",
                "sellmyimages.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.web_workers),
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=REPO,
        )
        try:
            wait_for_server(port, server)
            warmup = [("GET", "/healthz", None, {})] * 50
            run_load(port, warmup, args.concurrency)

            baseline = [("GET", "/healthz", None, {})] * args.requests
            latencies, seconds, errors = run_load(port, baseline, args.concurrency)
            trivial = summarize(latencies, seconds)
            assert not errors, f"healthz errors: {errors[:5]}"

            webhooks = []
            for job_id, session_id in jobs:
                body, signature = signed_event(job_id, session_id)
                headers = {
                    "Content-Type": "application/json",
                    "Stripe-Signature": signature,
                }
                webhooks.append(("POST", "/webhooks/stripe", body, headers))
            latencies, seconds, errors = run_load(port, webhooks, args.concurrency)
            ingest = summarize(latencies, seconds)
            if errors:
                print(f"  {label}: {len(errors)} webhook errors, e.g. {errors[:5]}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return trivial, ingest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=1000, help="Requests per measurement."
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="Concurrent connections."
    )
    parser.add_argument(
        "--web-workers", type=int, default=2, help="gunicorn processes."
    )
    parser.add_argument(
        "--conn-max-age",
        type=int,
        default=0,
        help="SMI_DB_CONN_MAX_AGE for the server, in seconds; the default 0 "
        "opens a database connection per request.",
    )
    args = parser.parse_args()

    targets = [("sqlite", None)]
    if postgres_available():
        targets.append(
            ("postgresql", f"postgres://postgres@127.0.0.1:5432/{PG_BENCH_DB}")
        )
    else:
        print("Nothing listens on 127.0.0.1:5432; measuring SQLite only.")

    print(
        f"{args.requests} requests per row, {args.concurrency} concurrent connections, "
        f"gunicorn with {args.web_workers} gthread workers x 4 threads, "
        f"SMI_DB_CONN_MAX_AGE={args.conn_max_age}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'database':<11} {'endpoint':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, url in targets:
        if url:
            reset_postgres_database()
        try:
            trivial, ingest = bench_database(label, url, args)
        finally:
            if url:
                reset_postgres_database(drop_only=True)
        for name, row in (("GET /healthz", trivial), ("POST webhook", ingest)):
            print(
                f"{label:<11} {name:<18} {row['rps']:>8.1f} {row['p50_ms']:>8.2f} "
                f"{row['p99_ms']:>8.2f}"
            )
        ratio = ingest["rps"] / trivial["rps"]
        print(f"{label:<11} webhook/healthz throughput ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
