"""What the Upsampler and Replicate fakes share: a loopback HTTP server,
fault injection, result files, and the link back to our Django app.

A fake's API runs in server threads on 127.0.0.2 and never touches the
database. The work a provider does on its own (download the source, upscale
it, call the webhook) happens when the test thread calls advance(). That
reaches our app through Django's test client, so every request to our app
runs in the test thread and uses the test database.
"""

import io
import json
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from django.conf import settings
from PIL import Image

HOST = "127.0.0.2"


@dataclass
class ResultFile:
    """A result the fake serves at /files/<name>, and how it misbehaves."""

    body: bytes = b""
    content_type: str = "image/png"
    # Send this Location with a 302 instead of the body.
    redirect_to: str | None = None
    # Send the body in small pieces over this many seconds.
    trickle_seconds: float = 0.0
    # Stream this many bytes of PNG-looking junk without a Content-Length.
    huge_bytes: int = 0
    # How many more fetches misbehave before the plain body is served.
    misbehave_times: int = 10**9
    fetches: int = 0


@dataclass
class FakeJob:
    """A job or prediction the fake is working on."""

    id: str
    source_url: str
    factor: float
    webhook: str | None
    body: dict
    status: str
    ready_at: float
    faults: dict = field(default_factory=dict)
    result_name: str | None = None
    error: str | None = None
    credits: int = 1
    callbacks_sent: int = 0
    created: float = field(default_factory=time.time)


class DjangoApp:
    """Our service as a provider reaches it: through Django's test client."""

    def __init__(self, client):
        self.client = client

    def path_of(self, url):
        base = settings.PUBLIC_BASE_URL
        if not url.startswith(base + "/"):
            raise ValueError(f"{url!r} is not a URL of our app ({base}).")
        return url[len(base) :]

    def get(self, url):
        response = self.client.get(self.path_of(url))
        if response.streaming:
            body = b"".join(response.streaming_content)
        else:
            body = response.content
        return response.status_code, body

    def post(self, url, body, headers=None):
        extra = {
            f"HTTP_{name.upper().replace('-', '_')}": value
            for name, value in (headers or {}).items()
        }
        response = self.client.post(
            self.path_of(url), data=body, content_type="application/json", **extra
        )
        return response.status_code


def upscale_png(source_bytes, factor, *, size_error=0):
    """Return PNG bytes of the image upscaled by `factor`, as a provider would."""
    with Image.open(io.BytesIO(source_bytes)) as image:
        image.load()
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        width = round(image.width * factor) + size_error
        height = round(image.height * factor) + size_error
        result = image.resize((width, height), Image.Resampling.BICUBIC)
    output = io.BytesIO()
    result.save(output, format="PNG", compress_level=1)
    return output.getvalue()


class FakeProvider:
    """Base of the loopback fakes: routing, faults, result files, callbacks."""

    # (method, compiled path pattern, handler method name)
    routes = []

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs = {}
        self.files = {}
        self.faults = defaultdict(deque)
        self.requests = []
        self.callback_statuses = []
        self.process_seconds = 0.0
        handler = type("Handler", (RequestHandler,), {"fake": self})
        self.server = ThreadingHTTPServer((HOST, 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()

    @property
    def origin(self):
        return f"http://{HOST}:{self.server.server_address[1]}"

    # Faults

    def inject(self, name, *, times=1, **options):
        """Make the next `times` occasions named `name` misbehave with `options`."""
        with self.lock:
            for _ in range(times):
                self.faults[name].append(options)

    def take_fault(self, name):
        with self.lock:
            if self.faults[name]:
                return self.faults[name].popleft()
        return None

    def job_faults(self):
        """Take the faults that apply to the job being created now."""
        names = [
            "fail_job",
            "wrong_size",
            "huge_result",
            "redirect_result",
            "slow_result",
            "stuck",
            "no_callback",
            "duplicate_callback",
            "wrong_secret_callback",
            "overcharge",
            "not_an_image",
        ]
        faults = {}
        for name in names:
            options = self.take_fault(name)
            if options is not None:
                faults[name] = options
        return faults

    def count(self, method, pattern):
        regex = re.compile(pattern)
        with self.lock:
            return sum(
                1 for m, p in self.requests if m == method and regex.fullmatch(p)
            )

    # Work done when the test thread lets time pass

    def advance(self, app):
        """Finish every job whose processing time is up, and send its callbacks."""
        now = time.time()
        with self.lock:
            due = [
                job
                for job in self.jobs.values()
                if job.status in self.running_statuses
                and job.ready_at <= now
                and "stuck" not in job.faults
            ]
        for job in due:
            self.finish(job, app)
            self.send_callbacks(job, app)

    def finish(self, job, app):
        faults = job.faults
        if "fail_job" in faults:
            self.mark_failed(job, faults["fail_job"].get("error", "Internal error"))
            return
        status, source = app.get(job.source_url)
        if status != 200:
            self.mark_failed(job, f"Could not download the image (HTTP {status}).")
            return
        size_error = (
            faults["wrong_size"].get("pixels", 7) if "wrong_size" in faults else 0
        )
        result = ResultFile(body=upscale_png(source, job.factor, size_error=size_error))
        if "not_an_image" in faults:
            result.body = b"<html>this is not an image</html>"
            result.content_type = "text/html"
        if "huge_result" in faults:
            result.huge_bytes = faults["huge_result"]["size"]
            result.misbehave_times = faults["huge_result"].get("fetches", 10**9)
        if "redirect_result" in faults:
            result.redirect_to = faults["redirect_result"]["location"]
        if "slow_result" in faults:
            result.trickle_seconds = faults["slow_result"]["seconds"]
            result.misbehave_times = faults["slow_result"].get("fetches", 10**9)
        name = f"{uuid.uuid4().hex}.png"
        with self.lock:
            self.files[name] = result
        self.mark_succeeded(job, name)

    def send_callbacks(self, job, app):
        if not job.webhook or "no_callback" in job.faults:
            return
        url = job.webhook
        if "wrong_secret_callback" in job.faults:
            url = url.rsplit("/", 1)[0] + "/" + "x" * 43
        copies = 2 if "duplicate_callback" in job.faults else 1
        for _ in range(copies):
            body, headers = self.callback_body(job)
            status = app.post(url, body, headers)
            with self.lock:
                job.callbacks_sent += 1
                self.callback_statuses.append(status)

    # Serving result files

    def serve_file(self, handler, name):
        with self.lock:
            result = self.files.get(name)
            if result is not None:
                result.fetches += 1
                misbehave = result.fetches <= result.misbehave_times
        if result is None:
            handler.send_json(404, {"error": "not found"})
            return
        if result.redirect_to:
            handler.send_response(302)
            handler.send_header("Location", result.redirect_to)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if misbehave and result.huge_bytes:
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.end_headers()
            chunk = b"\x89PNG\r\n\x1a\n" + b"\0" * (64 * 1024 - 8)
            sent = 0
            try:
                while sent < result.huge_bytes:
                    handler.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            handler.close_connection = True
            return
        handler.send_response(200)
        handler.send_header("Content-Type", result.content_type)
        handler.send_header("Content-Length", str(len(result.body)))
        handler.end_headers()
        if misbehave and result.trickle_seconds:
            pieces = 20
            step = max(1, len(result.body) // pieces)
            try:
                for start in range(0, len(result.body), step):
                    handler.wfile.write(result.body[start : start + step])
                    handler.wfile.flush()
                    time.sleep(result.trickle_seconds / pieces)
            except OSError:
                pass
            return
        handler.wfile.write(result.body)


class RequestHandler(BaseHTTPRequestHandler):
    fake = None

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def dispatch(self, method):
        path = urlsplit(self.path).path
        with self.fake.lock:
            self.fake.requests.append((method, path))
        for route_method, pattern, name in self.fake.routes:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                getattr(self.fake, name)(self, **match.groupdict())
                return
        self.send_json(404, {"detail": "Not found."})

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def bearer(self):
        header = self.headers.get("Authorization", "")
        return header.removeprefix("Bearer ") if header.startswith("Bearer ") else None

    def send_json(self, status, body, headers=None):
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            # The client gave up waiting, as in the timeout faults.
            pass


FINAL_STATUSES = ("completed", "failed")


def drive(job, *fakes, client, limit_seconds=30.0):
    """Run the fakes and our task worker until the job is completed or failed.

    Follow-up tasks (the email, the refund) run too. A job still processing
    after `limit_seconds` fails the test as stuck.
    """
    from sellmyimages.jobs.models import Job
    from tests.conftest import run_tasks

    app = DjangoApp(client)
    give_up = time.monotonic() + limit_seconds
    while True:
        for fake in fakes:
            fake.advance(app)
        run_tasks()
        current = Job.objects.get(pk=job.pk)
        if current.status in FINAL_STATUSES:
            run_tasks()
            return Job.objects.get(pk=job.pk)
        if time.monotonic() > give_up:
            events = list(current.events.values_list("event", "reason"))
            raise AssertionError(
                f"Job {current.job_id} is stuck in {current.status!r}; events: {events}"
            )
        time.sleep(0.05)
