"""One whole purchase on the embedded default, in one process.

The demo takes the same paths a customer does: it places an order, pays
on the local test checkout page through the WSGI application, lets a
task worker upscale the image and send the email, then follows the link
in that email to download the file.
"""

import email
import email.policy
import hashlib
import re
import shutil
from pathlib import Path

from django.conf import settings
from django.test import Client

DOWNLOAD_LINK = re.compile(r"/downloads/([0-9a-f]{64})")
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class DemoFailed(Exception):
    def __init__(self, message, exit_code=1):
        self.exit_code = exit_code
        super().__init__(message)


def default_image():
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def add_to_catalog(source):
    """Copy `source` into the catalog, named after its content, and return the name."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:10]
    name = f"{source.stem}-{digest}{source.suffix.lower()}"
    catalog = Path(settings.SMI_CATALOG_DIR)
    catalog.mkdir(parents=True, exist_ok=True)
    destination = catalog / name
    if not destination.exists():
        shutil.copyfile(source, destination)
    return name


def run_worker_until_idle(worker_id="demo"):
    """Run every ready task of the database queue in this process, then return."""
    from django_tasks_db.management.commands.db_worker import Worker

    Worker(
        queue_names=["*"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id=worker_id,
        excluded_queue_names=[],
    ).run()


def find_download_link(outbox, job, known):
    for path in sorted(Path(outbox).glob("*.eml")):
        if path in known:
            continue
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] != job.email:
            continue
        body = message.get_body(preferencelist=("plain",)).get_content()
        match = DOWNLOAD_LINK.search(body)
        if match:
            return path, match.group(1)
    return None, None


def run_demo(image, resolution, echo):
    from sellmyimages.catalog.images import ImageRejected, inspect_image
    from sellmyimages.cli import migrate
    from sellmyimages.jobs.exceptions import JobValidationError
    from sellmyimages.jobs.manager import job_manager
    from sellmyimages.orders import place_order, quote_image

    source = Path(image) if image else default_image()
    if not source.is_file():
        raise DemoFailed(f"Image {str(source)!r} not found.", exit_code=2)
    try:
        job_manager.validate_resolution(resolution)
        inspect_image(source)
    except (ImageRejected, JobValidationError) as exc:
        raise DemoFailed(str(exc), exit_code=2) from exc

    migrate()
    name = add_to_catalog(source)
    info, quotes = quote_image(catalog_image=name)
    echo(f"Image: {source} ({info.width}x{info.height}, {info.format})")
    for quote in quotes:
        echo(
            f"  {quote.resolution}: {quote.output_width}x{quote.output_height}, "
            f"{quote.credits} credits, provider cost {quote.provider_cost:.2f}, "
            f"price {quote.price} {quote.currency.upper()}"
        )

    outbox = Path(settings.SMI_OUTBOX_DIR)
    known_emails = set(outbox.glob("*.eml"))
    order = place_order(
        resolution=resolution,
        catalog_image=name,
        email="demo-customer@example.com",
        actor="cli",
    )
    job = order.job
    echo(f"Job {job.job_id} created: {job.status}, price {job.customer_price} {job.currency.upper()}")

    client = Client(enforce_csrf_checks=True, HTTP_HOST="127.0.0.1")
    checkout_path = order.checkout_url.removeprefix(settings.PUBLIC_BASE_URL)
    page = client.get(checkout_path)
    if page.status_code != 200:
        raise DemoFailed(f"The checkout page returned HTTP {page.status_code}.")
    token = CSRF_FIELD.search(page.content.decode()).group(1)
    paid = client.post(checkout_path, {"csrfmiddlewaretoken": token, "action": "pay"})
    if paid.status_code != 302:
        raise DemoFailed(f"Paying on the checkout page returned HTTP {paid.status_code}.")
    echo("Paid on the local test checkout page.")

    run_worker_until_idle()
    job = job_manager.get_job(job.job_id)
    for event in job.events.all():
        change = f"{event.from_status or '-'} -> {event.to_status}" if event.to_status else ""
        echo(f"  {event.created_at:%H:%M:%S.%f}  {event.event:<24} {change:<30} {event.actor}")
    if job.status != "completed":
        raise DemoFailed(f"The job ended as {job.status} ({job.failure_code}).")

    email_path, download_token = find_download_link(outbox, job, known_emails)
    if download_token is None:
        raise DemoFailed("No download email was written to the outbox.")
    echo(f"Email: {email_path}")

    response = client.get(f"/downloads/{download_token}")
    if response.status_code != 200:
        raise DemoFailed(f"The download link returned HTTP {response.status_code}.")
    downloads = Path(settings.DATA_DIR) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    filename = re.search(r'filename="([^"]+)"', response["Content-Disposition"]).group(1)
    target = downloads / filename
    with open(target, "wb") as handle:
        for chunk in response.streaming_content:
            handle.write(chunk)

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(target) as result:
        width, height = result.size
    expected = (info.width * job.factor, info.height * job.factor)
    echo(f"Downloaded: {target} ({width}x{height}, {target.stat().st_size} bytes)")
    if (width, height) != expected:
        raise DemoFailed(f"The download is {width}x{height}, expected {expected[0]}x{expected[1]}.")
    echo(f"OK: {info.width}x{info.height} became {width}x{height} ({resolution}).")
    return True
