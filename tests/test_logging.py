"""Structured logs: formats, job ids on job lines, and no secrets in a full run."""

import email
import email.policy
import io
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from django.test import Client

from sellmyimages.hooks.models import WebhookEndpoint
from sellmyimages.hooks.signing import generate_secret
from sellmyimages.logformat import (
    JsonFormatter,
    KeyValueFormatter,
    bind_job_id,
    parse_pairs,
)
from sellmyimages.logredact import RedactSecretsFilter, redact
from tests.conftest import REPO, files_in, run_tasks
from tests.test_outgoing_webhooks import WebhookReceiver

LINK = re.compile(r"http://testserver/downloads/([0-9a-f]{64})")
BUYER = "log-buyer@example.com"
OTHER_BUYER = "log-refund@example.org"
JOB_ID = "3f1c2b7e-8a6d-4c1e-9b2a-5d4e3f2a1b0c"


def configured_handler():
    """Return the handler that settings.LOGGING put on the root logger."""
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, RedactSecretsFilter) for f in handler.filters):
            return handler
    raise AssertionError("No root handler carries the redact filter.")


def make_record(message, *args, level=logging.INFO, **extra):
    record = logging.LogRecord(
        "sellmyimages.test", level, __file__, 1, message, args, None
    )
    record.__dict__.update(extra)
    return record


def test_settings_handler_redacts_and_formats():
    handler = configured_handler()
    assert isinstance(handler.formatter, KeyValueFormatter)


def test_parse_pairs_reads_quoted_values():
    fields, other_text = parse_pairs(
        "event=upscale_failed job_id=abc code=timeout error='took too long' n=3"
    )
    assert fields == {
        "event": "upscale_failed",
        "job_id": "abc",
        "code": "timeout",
        "error": "took too long",
        "n": "3",
    }
    assert other_text is False


def test_parse_pairs_flags_free_text():
    fields, other_text = parse_pairs("fetch complete host=example.org size_bytes=10")
    assert fields == {"host": "example.org", "size_bytes": "10"}
    assert other_text is True


def test_json_formatter_fields():
    record = make_record(
        "event=job_created job_id=%s price=%s", JOB_ID, "5.00", webhook_event="x"
    )
    document = json.loads(JsonFormatter().format(record))
    assert document["event"] == "job_created"
    assert document["job_id"] == JOB_ID
    assert document["price"] == "5.00"
    assert document["webhook_event"] == "x"
    assert document["level"] == "INFO"
    assert document["logger"] == "sellmyimages.test"
    assert "message" not in document


def test_formatters_skip_object_extras():
    record = make_record("Not Found: /x", status_code=404, request=object())
    keyvalue = KeyValueFormatter().format(record)
    document = json.loads(JsonFormatter().format(record))
    assert "status_code=404" in keyvalue
    assert "request=" not in keyvalue
    assert document["status_code"] == 404
    assert "request" not in document


def test_json_formatter_keeps_free_text_message():
    document = json.loads(JsonFormatter().format(make_record("Not Found: /x")))
    assert document["message"] == "Not Found: /x"


def test_json_formatter_reserved_names_keep_message():
    record = make_record("event=odd level=custom")
    document = json.loads(JsonFormatter().format(record))
    assert document["level"] == "INFO"
    assert document["message"] == "event=odd level=custom"


def test_bound_job_id_added_to_lines():
    with bind_job_id(JOB_ID):
        keyvalue = KeyValueFormatter().format(make_record("fetch complete host=a"))
        document = json.loads(JsonFormatter().format(make_record("fetch complete")))
        own = KeyValueFormatter().format(make_record("event=x job_id=other"))
    assert keyvalue.endswith(f"job_id={JOB_ID}")
    assert document["job_id"] == JOB_ID
    assert own.count("job_id=") == 1
    assert "job_id" not in json.loads(JsonFormatter().format(make_record("after")))


def test_formatters_redact_tracebacks_and_extras():
    token = "a" * 64
    try:
        raise ValueError(f"GET http://shop.example/downloads/{token} failed")
    except ValueError:
        record = make_record(
            "event=boom", level=logging.ERROR, note="mail buyer@example.com"
        )
        record.exc_info = sys.exc_info()
    for formatter in (KeyValueFormatter(), JsonFormatter()):
        record.exc_text = None
        output = formatter.format(record)
        assert token not in output
        assert "buyer@example.com" not in output
        assert "/downloads/[redacted]" in output


@pytest.mark.parametrize(
    "text, secret",
    [
        (
            "secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw+/ab==",
            "MfKQ9r8GKYqrTwjUPD8ILPZ",
        ),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw+/ab==", "+/ab=="),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("checkout_session_id=lcs_0123456789abcdef0123", "0123456789abcdef0123"),
        ("session cs_test_a1B2c3D4e5F6g7H8 opened", "a1B2c3D4e5F6g7H8"),
        ("event=x api_key=k-12345 other=1", "k-12345"),
        ("event=x download_token='0badc0de'", "0badc0de"),
    ],
)
def test_redact_patterns(text, secret):
    assert secret not in redact(text)


def test_redact_keeps_ordinary_pairs():
    line = "event=download_token_issued job_id=abc tokens_left=3 csv_rows=10"
    assert redact(line) == line


def test_json_format_setting_in_a_fresh_process():
    code = (
        "import django, logging; django.setup();"
        "logging.getLogger('sellmyimages.demo').warning("
        "'event=probe job_id=%s email=%s', 'j-1', 'someone@example.com')"
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "SMI_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if '"event": "probe"' in line]
    assert len(lines) == 1
    document = json.loads(lines[0])
    assert document["job_id"] == "j-1"
    assert document["level"] == "WARNING"
    assert "someone@example.com" not in lines[0]


def test_unknown_log_format_rejected():
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "SMI_LOG_FORMAT": "xml",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "SMI_LOG_FORMAT='xml'" in done.stderr


class RecordList(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def captured_logs():
    """Copy every record from DEBUG up into two streams, one per format.

    The copies use the configured handler's formatter and filters, so they
    show what the console would print with either setting.
    """
    console = configured_handler()
    streams = {"keyvalue": io.StringIO(), "json": io.StringIO()}
    records = RecordList()
    formatters = {"keyvalue": console.formatter, "json": JsonFormatter()}
    handlers = []
    for name, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(formatters[name])
        for log_filter in console.filters:
            handler.addFilter(log_filter)
        handlers.append(handler)
    records.setLevel(logging.DEBUG)
    handlers.append(records)

    root = logging.getLogger()
    quiet = [
        logging.getLogger(name)
        for name in ("django.tasks", "django_tasks_db", "pyvips", "django")
    ]
    levels = [(logger, logger.level) for logger in [root, *quiet]]
    for logger, _level in levels:
        logger.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield {**streams, "records": records.records}
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        for logger, level in levels:
            logger.setLevel(level)


def buy(client, catalog_name, email):
    created = client.post(
        "/api/v1/jobs",
        {"catalog_image": catalog_name, "resolution": "4x"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    checkout = created.json()["checkout_url"].removeprefix("http://testserver")
    paid = client.post(checkout, {"action": "pay", "email": email})
    assert paid.status_code == 302
    return created.json()["job_id"], checkout


@pytest.mark.django_db(transaction=True)
def test_full_lifecycle_logs_no_secrets(catalog, settings, captured_logs):
    settings.SMI_FETCH_ALLOWED_ADDRESSES = ["127.0.0.2"]
    settings.SMI_WEBHOOK_RETRY_BASE_SECONDS = 0
    settings.SMI_METRICS_TOKEN = "metrics-token-5b7e1d0c"
    settings.STRIPE_SECRET_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_stripeTestSecret0123456789"
    hook_secret = generate_secret()
    client = Client()
    name = catalog("photo_cat_chelsea_451x300.png")
    doomed = catalog("photo_cat_chelsea_451x300.png", "doomed.png")

    with WebhookReceiver("127.0.0.2", hook_secret, responses=[500]) as receiver:
        endpoint = WebhookEndpoint(
            url=receiver.url + "?token=receiver-query-secret",
            events=["job_created", "payment_completed", "job_completed", "job_failed"],
            secret=hook_secret,
        )
        endpoint.full_clean()
        endpoint.save()

        job_id, checkout = buy(client, name, BUYER)
        failed_job_id, _ = buy(client, doomed, OTHER_BUYER)
        (settings.SMI_CATALOG_DIR / doomed).unlink()
        run_tasks()

        messages = [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            .get_body(preferencelist=("plain",))
            .get_content()
            for path in files_in(settings.SMI_OUTBOX_DIR)
        ]
        token = next(LINK.search(m).group(1) for m in messages if LINK.search(m))
        download = client.get(f"/downloads/{token}")
        assert download.status_code == 200
        b"".join(download.streaming_content)
        # Django logs the path of every 404, which carries the secrets.
        assert client.get(f"/downloads/{token}0").status_code == 404
        assert client.get(f"{checkout}x/").status_code == 404
        scraped = client.get(
            "/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.SMI_METRICS_TOKEN}"
        )
        assert scraped.status_code == 200

    assert len(receiver.received) >= 5
    session_secret = checkout.rstrip("/").rsplit("/", 1)[1].removeprefix("lcs_")
    secrets = {
        "customer email": BUYER,
        "refunded customer email": OTHER_BUYER,
        "download token": token,
        "checkout session id": session_secret,
        "SECRET_KEY": settings.SECRET_KEY,
        "webhook secret": hook_secret.removeprefix("whsec_"),
        "webhook secret prefix": hook_secret[:14],
        "webhook URL query": "receiver-query-secret",
        "metrics token": settings.SMI_METRICS_TOKEN,
        "Stripe key": settings.STRIPE_SECRET_KEY.removeprefix("sk_test_"),
        "Stripe webhook secret": settings.STRIPE_WEBHOOK_SECRET.removeprefix("whsec_"),
    }
    for format_name in ("keyvalue", "json"):
        output = captured_logs[format_name].getvalue()
        assert job_id in output, f"{format_name} logs never name the job"
        assert "download_started" in output
        assert "webhook_delivered" in output
        assert "webhook_attempt_failed" in output
        assert "Not Found: /downloads/[redacted]" in output
        for label, secret in secrets.items():
            assert secret not in output, f"{label} appears in the {format_name} logs"


@pytest.mark.django_db(transaction=True)
def test_job_lines_carry_event_and_job_id(catalog, captured_logs):
    client = Client()
    job_id, _checkout = buy(client, catalog("photo_cat_chelsea_451x300.png"), BUYER)
    run_tasks()

    # Lines whose own message names the job. Lines that only get the job id
    # from the task context need not carry an event name.
    about_job = [
        record
        for record in captured_logs["records"]
        if record.name.startswith("sellmyimages") and job_id in record.getMessage()
    ]
    assert len(about_job) >= 5
    keyvalue = KeyValueFormatter()
    json_format = JsonFormatter()
    events = set()
    for record in about_job:
        line = keyvalue.format(record)
        assert " event=" in line, line
        assert f"job_id={job_id}" in line, line
        document = json.loads(json_format.format(record))
        assert document.get("job_id") == job_id, document
        assert document.get("event"), document
        events.add(document["event"])
    assert {
        "job_created",
        "payment_completed",
        "status_changed",
        "email_sent",
    } <= events

    # Every line logged while a task worked on the job names the job.
    documents = [
        json.loads(line) for line in captured_logs["json"].getvalue().splitlines()
    ]
    engine_lines = [
        d for d in documents if d["logger"].startswith("sellmyimages.upscaling")
    ]
    assert engine_lines
    assert all(d.get("job_id") == job_id for d in engine_lines)
