"""`smi serve` as a user runs it: gunicorn and a task worker, over real HTTP."""

import email
import email.policy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, image_file

CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/downloads/[0-9a-f]{64})")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(message)


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "serve-data"
    (data / "catalog").mkdir(parents=True)
    shutil.copyfile(image_file("photo_cat_chelsea_451x300.png"), data / "catalog" / "cat.png")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SMI_DATA_DIR": str(data),
        "SMI_PUBLIC_BASE_URL": base,
        "DJANGO_SETTINGS_MODULE": "sellmyimages.settings",
    }
    env.pop("DATABASE_URL", None)
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sellmyimages.cli", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy():
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 60, "smi serve did not answer /healthz within 60 s")
        yield base, data, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_serve_sells_and_delivers(server):
    base, data, process = server
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/readyz").json()["database"] == "ok"
        assert "cat.png" in client.get("/").text

        created = client.post(
            "/api/v1/jobs", json={"catalog_image": "cat.png", "resolution": "4x"}
        )
        assert created.status_code == 201
        job = created.json()
        checkout = client.get(job["checkout_url"])
        assert "test checkout" in checkout.text.lower()
        token = CSRF_FIELD.search(checkout.text).group(1)
        paid = client.post(
            job["checkout_url"],
            data={"csrfmiddlewaretoken": token, "action": "pay", "email": "serve@example.com"},
        )
        assert paid.status_code == 302

        def completed():
            status = client.get(f"/api/v1/jobs/{job['job_id']}").json()
            assert status["status"] not in ("failed", "abandoned"), status
            return status["status"] == "completed"

        wait_until(completed, 90, "the worker did not complete the job within 90 s")

        def download_link():
            for path in sorted((data / "outbox").glob("*.eml")):
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                match = LINK.search(message.get_body(("plain",)).get_content())
                if match:
                    return match.group(1)
            return None

        link = wait_until(download_link, 30, "no download email in the outbox")
        head = client.get(link, headers={"Range": "bytes=0-7"})
        assert head.status_code == 206
        assert head.content == b"\x89PNG\r\n\x1a\n"
        whole = client.get(link)
        assert whole.status_code == 200
        assert len(whole.content) == int(whole.headers["Content-Length"])

    log = (data.parent / "serve.log").read_text()
    assert "serve@example.com" not in log
    assert link.rsplit("/", 1)[1] not in log

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
