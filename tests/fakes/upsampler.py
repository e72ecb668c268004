"""A fake Upsampler API on loopback.

It follows what the two published clients agree on: POST
/api/v1/precise-upscale with a Bearer key and a body of
{"input": {imageUrl, upscaleFactor, inputImageType, ...}, "webhook": url},
which returns {id, status, creditCost}; GET /api/v1/status/{id} returning
IN_QUEUE, IN_PROGRESS, SUCCESS (with imageUrl) or FAILED (with error); and
an unsigned JSON POST to the webhook URL when a job finishes. Precise
upscaling costs a credit per 4 output megapixels, with a minimum of one.

Faults (FakeProvider.inject): submit_error (status, retry_after, error),
submit_timeout (seconds; the job is created), submit_drop (seconds; it is
not), status_error (status), and per job fail_job, wrong_size, huge_result,
redirect_result, slow_result, stuck, no_callback, duplicate_callback,
wrong_secret_callback, overcharge, not_an_image.
"""

import io
import json
import math
import re
import time
import uuid

import pytest
from PIL import Image

from tests.fakes.loopback import FakeJob, FakeProvider

INPUT_IMAGE_TYPES = {"realism", "anime", "universal"}
UPSCALE_PATHS = ("precise-upscale", "smart-upscale", "dynamic-upscale")


class FakeUpsampler(FakeProvider):
    api_key = "upsampler-test-key"
    running_statuses = ("IN_QUEUE", "IN_PROGRESS")
    routes = [
        ("POST", re.compile(r"/api/v1/(?P<endpoint>[a-z-]+)"), "create"),
        ("GET", re.compile(r"/api/v1/status/(?P<job_id>[^/]+)"), "status"),
        ("GET", re.compile(r"/files/(?P<name>[^/]+)"), "serve_file"),
    ]

    @property
    def api_base(self):
        return f"{self.origin}/api/v1"

    def check_key(self, handler):
        if handler.bearer() != self.api_key:
            handler.send_json(401, {"error": "Invalid API key"})
            return False
        return True

    def create(self, handler, endpoint):
        if endpoint not in UPSCALE_PATHS:
            handler.send_json(404, {"error": "Not found"})
            return
        body = handler.read_json()
        if not self.check_key(handler):
            return
        fault = self.take_fault("submit_error")
        if fault is not None:
            headers = {}
            if fault.get("retry_after") is not None:
                headers["Retry-After"] = str(fault["retry_after"])
            handler.send_json(
                fault.get("status", 500),
                {"error": fault.get("error", "Internal server error")},
                headers,
            )
            return

        problem = self.validate(body)
        if problem:
            handler.send_json(400, {"error": problem})
            return
        drop = self.take_fault("submit_drop")
        if drop is not None:
            time.sleep(drop["seconds"])
            handler.close_connection = True
            return
        job = self.start_job(body)
        delay = self.take_fault("submit_timeout")
        if delay is not None:
            # The job exists, but the response comes after the client gave up.
            time.sleep(delay["seconds"])
        handler.send_json(
            200, {"id": job.id, "status": job.status, "creditCost": job.credits}
        )

    @staticmethod
    def validate(body):
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return "The body must be a JSON object with an 'input' object."
        upscale_input = body["input"]
        url = upscale_input.get("imageUrl")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return "input.imageUrl must be a public image URL."
        factor = upscale_input.get("upscaleFactor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            return "input.upscaleFactor must be a number."
        if not 1 <= factor <= 16:
            return "input.upscaleFactor must be between 1 and 16."
        if upscale_input.get("inputImageType") not in INPUT_IMAGE_TYPES:
            return "input.inputImageType must be realism, anime or universal."
        for name in ("globalCreativity", "detail"):
            if name in upscale_input and (
                not isinstance(upscale_input[name], int)
                or not 0 <= upscale_input[name] <= 10
            ):
                return f"input.{name} must be an integer from 0 to 10."
        if "webhook" in body and not isinstance(body["webhook"], str):
            return "webhook must be a URL."
        return ""

    def start_job(self, body):
        upscale_input = body["input"]
        job = FakeJob(
            id=str(uuid.uuid4()),
            source_url=upscale_input["imageUrl"],
            factor=upscale_input["upscaleFactor"],
            webhook=body.get("webhook"),
            body=body,
            status="IN_QUEUE",
            ready_at=time.time() + self.process_seconds,
            faults=self.job_faults(),
        )
        with self.lock:
            self.jobs[job.id] = job
        return job

    def status(self, handler, job_id):
        if not self.check_key(handler):
            return
        fault = self.take_fault("status_error")
        if fault is not None:
            handler.send_json(
                fault.get("status", 500), {"error": "Internal server error"}
            )
            return
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and job.status == "IN_QUEUE":
                job.status = "IN_PROGRESS"
            body = self.job_json(job) if job is not None else None
        if body is None:
            handler.send_json(404, {"error": "Job not found"})
            return
        handler.send_json(200, body)

    def job_json(self, job):
        body = {"id": job.id, "status": job.status, "creditCost": job.credits}
        if job.status == "SUCCESS":
            body["imageUrl"] = f"{self.origin}/files/{job.result_name}"
            body["compressedImageUrl"] = (
                f"{self.origin}/files/{job.result_name}?compressed=1"
            )
        if job.status == "FAILED":
            body["error"] = job.error
        return body

    def mark_succeeded(self, job, name):
        with self.lock:
            job.result_name = name
            job.status = "SUCCESS"
            job.credits = self.credits_for(job)

    def mark_failed(self, job, error):
        with self.lock:
            job.status = "FAILED"
            job.error = error

    def credits_for(self, job):
        result = self.files[job.result_name]
        try:
            with Image.open(io.BytesIO(result.body)) as image:
                megapixels = image.width * image.height / 1_000_000
        except OSError:
            megapixels = 1
        credits = max(1, math.ceil(megapixels / 4))
        if "overcharge" in job.faults:
            credits += job.faults["overcharge"].get("extra", 5)
        return credits

    def callback_body(self, job):
        with self.lock:
            body = self.job_json(job)
        return json.dumps(body).encode(), {}


def configure(settings, fake):
    """Point the settings at `fake` with timings short enough for tests."""
    settings.SMI_UPSCALERS = ["upsampler"]
    settings.UPSAMPLER_API_KEY = fake.api_key
    settings.UPSAMPLER_API_BASE = fake.api_base
    fast_provider_timings(settings)


def fast_provider_timings(settings):
    """Shorten every provider delay; polling waits for callbacks by default."""
    settings.SMI_FETCH_ALLOWED_ADDRESSES = ["127.0.0.2"]
    settings.SMI_PROVIDER_TIMEOUT_SECONDS = 0.5
    settings.SMI_PROVIDER_RETRY_BASE_SECONDS = 0.05
    settings.SMI_PROVIDER_RETRY_MAX_SECONDS = 0.2
    settings.SMI_PROVIDER_POLL_INITIAL_SECONDS = 60
    settings.SMI_PROVIDER_POLL_MAX_SECONDS = 60
    settings.SMI_PROVIDER_MAX_PROCESSING_MINUTES = 2
    settings.SMI_RESULT_FETCH_TIMEOUT_SECONDS = 1.0
    settings.SMI_CIRCUIT_FAILURE_THRESHOLD = 3
    settings.SMI_CIRCUIT_COOLDOWN_SECONDS = 60


@pytest.fixture
def upsampler(settings):
    """A running fake Upsampler that the settings point at."""
    with FakeUpsampler() as fake:
        configure(settings, fake)
        yield fake
