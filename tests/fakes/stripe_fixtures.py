"""Fixtures and helpers for the Stripe tests: localstripe, the fake API, signed events.

Test modules import the fixtures they use from here.
"""

import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.stripe_api import FakeStripe

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_test_smi"
API_KEY = "sk_test_smi"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"localstripe exited with code {process.returncode}.")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"localstripe did not listen on port {port} within {timeout} s.")


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory):
    """Run localstripe on 127.0.0.1 for the whole test session; return its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "fakes" / "localstripe_server.py"),
                str(port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def fake_stripe(localstripe):
    fake = FakeStripe(upstream=localstripe).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def stripe_shop(settings, fake_stripe):
    """Configure the shop for Stripe in test mode, pointed at the fake API."""
    settings.SMI_PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = API_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.SMI_STRIPE_API_BASE = fake_stripe.url
    settings.SMI_STRIPE_MAX_NETWORK_RETRIES = 0
    settings.SMI_STRIPE_TIMEOUT_SECONDS = 10
    return fake_stripe


def stripe_env(fake, data_dir, **extra):
    """Environment for a shop process of its own on SQLite, pointed at the fake API."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        SMI_DATA_DIR=str(data_dir),
        SMI_PAYMENT_PROVIDER="stripe",
        STRIPE_SECRET_KEY=API_KEY,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        SMI_STRIPE_API_BASE=fake.url,
        SMI_STRIPE_MAX_NETWORK_RETRIES="0",
        SMI_PUBLIC_BASE_URL="http://testserver",
        DJANGO_SETTINGS_MODULE="sellmyimages.settings",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
        **extra,
    )
    return env


# Events


def make_event(event_type, obj, *, created=None, livemode=False, event_id=None):
    """Return an event shaped like Stripe's v1 snapshot events."""
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(created if created is not None else time.time()),
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": obj},
    }


def sign(payload, secret=WEBHOOK_SECRET, timestamp=None):
    """Return a Stripe-Signature header: HMAC-SHA256 of "<t>.<body>", hex, as v1."""
    timestamp = int(timestamp if timestamp is not None else time.time())
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def post_event(client, event, *, secret=WEBHOOK_SECRET, timestamp=None, signature=None):
    payload = event if isinstance(event, bytes) else json.dumps(event).encode()
    headers = {}
    if signature is not False:
        headers["HTTP_STRIPE_SIGNATURE"] = signature or sign(payload, secret, timestamp)
    return client.post(
        "/webhooks/stripe", data=payload, content_type="application/json", **headers
    )


def make_stripe_job(catalog_name, resolution="4x", email="buyer@example.com"):
    """Create a job awaiting a Stripe payment, without starting its checkout."""
    from sellmyimages.catalog.images import catalog_path, inspect_image
    from sellmyimages.jobs.manager import job_manager

    info = inspect_image(catalog_path(catalog_name))
    return job_manager.create_job(
        resolution=resolution,
        source_kind="catalog",
        source_ref=catalog_name,
        source_path=info.path,
        source_width=info.width,
        source_height=info.height,
        source_format=info.format,
        email=email,
        payment_provider="stripe",
    )
