"""A fake Replicate predictions API on loopback, with signed webhooks.

It serves POST /v1/models/{owner}/{name}/predictions and POST
/v1/predictions (which needs a version), GET /v1/predictions/{id} and the
cursor-paginated GET /v1/predictions, as replicate-python uses them. A
prediction goes starting -> processing -> succeeded (output is one URI, as
for nightmareai/real-esrgan) or failed. On completion it POSTs the
prediction to the webhook, signed the Standard Webhooks way with the
account's whsec_ secret.

Faults are the Upsampler fake's, plus list_output (output as a list) and
bad_signature (the webhook carries a wrong signature).
"""

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fakes.loopback import FakeJob, FakeProvider
from tests.fakes.upsampler import fast_provider_timings

WEBHOOK_EVENTS = {"start", "output", "logs", "completed"}
PAGE_SIZE = 5


class FakeReplicate(FakeProvider):
    api_token = "r8_test_token"
    running_statuses = ("starting", "processing")
    routes = [
        (
            "POST",
            re.compile(r"/v1/models/(?P<owner>[^/]+)/(?P<model>[^/]+)/predictions"),
            "create_for_model",
        ),
        ("POST", re.compile(r"/v1/predictions"), "create_for_version"),
        (
            "GET",
            re.compile(r"/v1/predictions/(?P<prediction_id>[^/]+)"),
            "get_prediction",
        ),
        ("GET", re.compile(r"/v1/predictions"), "list_predictions"),
        ("GET", re.compile(r"/files/(?P<name>[^/]+)"), "serve_file"),
    ]

    def __init__(self):
        super().__init__()
        self.webhook_secret = (
            "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        )
        self.order = []

    def check_token(self, handler):
        if handler.bearer() != self.api_token:
            handler.send_json(
                401,
                {
                    "title": "Unauthenticated",
                    "detail": "You did not pass a valid authentication token",
                    "status": 401,
                },
            )
            return False
        return True

    def create_for_model(self, handler, owner, model):
        self.create(handler, model=f"{owner}/{model}", version=None)

    def create_for_version(self, handler):
        self.create(handler, model=None, version="required")

    def create(self, handler, *, model, version):
        body = handler.read_json()
        if not self.check_token(handler):
            return
        fault = self.take_fault("submit_error")
        if fault is not None:
            headers = {}
            if fault.get("retry_after") is not None:
                headers["Retry-After"] = str(fault["retry_after"])
            handler.send_json(
                fault.get("status", 500),
                {
                    "detail": fault.get("error", "Internal server error"),
                    "status": fault.get("status", 500),
                },
                headers,
            )
            return

        problem = self.validate(body, needs_version=version is not None)
        if problem:
            handler.send_json(
                422, {"title": "Invalid input", "detail": problem, "status": 422}
            )
            return
        drop = self.take_fault("submit_drop")
        if drop is not None:
            time.sleep(drop["seconds"])
            handler.close_connection = True
            return
        prediction = self.start_prediction(body, model or "nightmareai/real-esrgan")
        delay = self.take_fault("submit_timeout")
        if delay is not None:
            time.sleep(delay["seconds"])
        with self.lock:
            answer = self.prediction_json(prediction)
        handler.send_json(201, answer)

    @staticmethod
    def validate(body, *, needs_version):
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return "The body must be a JSON object with an 'input' object."
        if needs_version and not isinstance(body.get("version"), str):
            return "version is required."
        model_input = body["input"]
        if not isinstance(model_input.get("image"), str):
            return "input.image: Invalid type. Expected: string."
        scale = model_input.get("scale", 4)
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not 0 <= scale <= 10
        ):
            return "input.scale: Must be between 0 and 10."
        if not isinstance(model_input.get("face_enhance", False), bool):
            return "input.face_enhance: Invalid type. Expected: boolean."
        events = body.get("webhook_events_filter", [])
        if not isinstance(events, list) or not set(events) <= WEBHOOK_EVENTS:
            return (
                "webhook_events_filter must contain start, output, logs or completed."
            )
        return ""

    def start_prediction(self, body, model):
        model_input = body["input"]
        prediction = FakeJob(
            id=uuid.uuid4().hex[:26],
            source_url=model_input["image"],
            factor=model_input.get("scale", 4),
            webhook=body.get("webhook"),
            body=body,
            status="starting",
            ready_at=time.time() + self.process_seconds,
            faults=self.job_faults(),
        )
        prediction.model = model
        prediction.version = body.get("version") or "latest"
        for name in ("list_output", "bad_signature"):
            options = self.take_fault(name)
            if options is not None:
                prediction.faults[name] = options
        with self.lock:
            self.jobs[prediction.id] = prediction
            self.order.insert(0, prediction.id)
        return prediction

    def prediction_json(self, prediction):
        output = None
        if prediction.status == "succeeded":
            output = f"{self.origin}/files/{prediction.result_name}"
            if "list_output" in prediction.faults:
                output = [output]
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": prediction.body["input"],
            "logs": "",
            "output": output,
            "error": prediction.error,
            "status": prediction.status,
            "created_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(prediction.created)
            ),
            "metrics": (
                {"predict_time": 1.25} if prediction.status == "succeeded" else {}
            ),
            "urls": {
                "get": f"{self.origin}/v1/predictions/{prediction.id}",
                "cancel": f"{self.origin}/v1/predictions/{prediction.id}/cancel",
            },
        }

    def get_prediction(self, handler, prediction_id):
        if not self.check_token(handler):
            return
        fault = self.take_fault("status_error")
        if fault is not None:
            handler.send_json(
                fault.get("status", 500), {"detail": "Internal server error"}
            )
            return
        with self.lock:
            prediction = self.jobs.get(prediction_id)
            if prediction is not None and prediction.status == "starting":
                prediction.status = "processing"
            body = self.prediction_json(prediction) if prediction else None
        if body is None:
            handler.send_json(404, {"detail": "Not found.", "status": 404})
            return
        handler.send_json(200, body)

    def list_predictions(self, handler):
        if not self.check_token(handler):
            return
        cursor = parse_qs(urlsplit(handler.path).query).get("cursor", ["0"])[0]
        start = int(cursor) if cursor.isdigit() else 0
        with self.lock:
            page = [
                self.prediction_json(self.jobs[i])
                for i in self.order[start : start + PAGE_SIZE]
            ]
            more = start + PAGE_SIZE < len(self.order)
        next_url = (
            f"{self.origin}/v1/predictions?cursor={start + PAGE_SIZE}" if more else None
        )
        handler.send_json(200, {"previous": None, "next": next_url, "results": page})

    def mark_succeeded(self, prediction, name):
        with self.lock:
            prediction.result_name = name
            prediction.status = "succeeded"

    def mark_failed(self, prediction, error):
        with self.lock:
            prediction.status = "failed"
            prediction.error = error

    def callback_body(self, prediction):
        with self.lock:
            body = json.dumps(self.prediction_json(prediction)).encode()
        message_id = f"msg_{uuid.uuid4().hex}"
        timestamp = str(int(time.time()))
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        if "bad_signature" in prediction.faults:
            digest = bytes(len(digest))
        signature = "v1," + base64.b64encode(digest).decode()
        headers = {
            "webhook-id": message_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": signature,
        }
        return body, headers


def configure(settings, fake):
    """Point the settings at `fake` with timings short enough for tests."""
    settings.SMI_UPSCALERS = ["replicate"]
    settings.REPLICATE_API_TOKEN = fake.api_token
    settings.REPLICATE_API_BASE = fake.origin
    settings.REPLICATE_WEBHOOK_SECRET = fake.webhook_secret
    settings.REPLICATE_MODEL = "nightmareai/real-esrgan"
    settings.REPLICATE_VERSION = ""
    fast_provider_timings(settings)


@pytest.fixture
def replicate(settings):
    """A running fake Replicate that the settings point at."""
    with FakeReplicate() as fake:
        configure(settings, fake)
        yield fake
