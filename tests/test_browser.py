"""A real browser buys an image, and an admin retries a failed job.

Debian's chromium runs headless through Playwright against the live test
server on loopback; the test thread runs the task worker. Screenshots go
to test-artifacts/ for a person to look at after the run.
"""

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.db import connections
from PIL import Image

from sellmyimages.jobs.models import Job
from tests.conftest import REPO, run_tasks
from tests.operator_jobs import CAT, failed_job_with_failed_refund

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Milliseconds the page may take to show the finished order; the worker
# runs in this thread first, so this covers the page's 2-second polling.
PAGE_TIMEOUT_MS = 30_000

if not CHROMIUM.is_file():
    reason = (
        f"{CHROMIUM} is missing; install Debian's chromium package "
        "(apt-get install chromium)."
    )
    print(f"Skipping browser tests: {reason}")
    pytestmark = [pytest.mark.browser, pytest.mark.skip(reason=reason)]
else:
    pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def allow_orm_beside_playwright(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread, which makes
    # Django refuse ORM calls from it; the test's own calls are synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def site(live_server, settings):
    """Return the live server's base URL, checked to be on loopback."""
    host = urlsplit(live_server.url).hostname
    for *_, address in socket.getaddrinfo(host, None):
        assert ipaddress.ip_address(address[0]).is_loopback, address
    settings.PUBLIC_BASE_URL = live_server.url
    return live_server.url


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()
            # While Playwright's event loop runs, Django hands this thread
            # a connection of its own, which would outlive the test and
            # keep PostgreSQL from dropping the test database.
            connections.close_all()


@pytest.fixture
def page(browser):
    context = browser.new_context(
        accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield page
    context.close()


def screenshot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_purchase_in_browser(site, page, catalog, tmp_path):
    catalog(CAT)

    page.goto(f"{site}/")
    page.click(f"a.card:has-text('{CAT}')")
    page.check("#res-4x")
    page.click("button:has-text('Buy')")
    page.wait_for_selector("text=Test checkout")
    page.fill("input[name=email]", "browser-buyer@example.com")
    page.click("button[value=pay]")
    page.wait_for_url("**/orders/**")

    run_tasks()

    page.wait_for_selector("#status[data-status=completed]")
    assert page.text_content("#status").strip() == "Completed"
    download_button = page.wait_for_selector("#download")
    assert download_button.is_visible()
    shot = screenshot(page, "purchase-completed")
    assert shot.stat().st_size > 0

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    assert download.suggested_filename == "photo_cat_chelsea_451x300-4x.png"
    with Image.open(target) as image:
        assert image.size == (451 * 4, 300 * 4)
    job = Job.objects.get()
    assert job.email == "browser-buyer@example.com"
    assert job.download_count == 1


def test_admin_retries_failed_job(site, page, client, catalog, settings, admin_user):
    job = failed_job_with_failed_refund(client, catalog, settings)
    change_url = f"{site}/admin/jobs/job/{job.pk}/change/"

    page.goto(f"{site}/admin/login/?next=/admin/jobs/job/{job.pk}/change/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_url(change_url)
    assert page.text_content(".field-status .readonly").strip() == "Failed"
    assert "source_missing" in page.text_content(".field-failure_code .readonly")

    page.click("a.job-action:has-text('Retry')")
    page.wait_for_selector("#confirm")
    screenshot(page, "admin-retry-confirm")
    page.fill("#id_reason", "source file restored")
    page.click("#confirm")
    page.wait_for_url(change_url)

    assert "moved back to pending" in page.text_content("ul.messagelist")
    assert page.text_content(".field-status .readonly").strip() == "Pending"
    timeline = page.text_content("#timeline")
    assert "admin:admin" in timeline
    assert "source file restored" in timeline
    screenshot(page, "admin-retry-done")

    run_tasks()

    page.goto(change_url)
    assert page.text_content(".field-status .readonly").strip() == "Completed"
    assert Job.objects.get(pk=job.pk).output_width == 451 * 4
