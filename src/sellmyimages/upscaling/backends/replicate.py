"""Replicate: Real-ESRGAN upscaling through the predictions API.

A prediction is created with a webhook that fires when it completes, and
looked up with GET /v1/predictions/{id}. Replicate signs its webhooks the
Standard Webhooks way: HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}"
with the account's whsec_ key, base64-encoded in webhook-signature.
"""

import base64
import binascii
import hashlib
import hmac
import logging
import time
from urllib.parse import parse_qs, quote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from sellmyimages.upscaling.backends.base import (
    CallbackRejected,
    ProviderError,
    ProviderState,
    ProviderStatus,
    RemoteUpscaler,
    Started,
)

logger = logging.getLogger(__name__)

RUNNING_STATUSES = ("starting", "processing")
FAILED_STATUSES = ("failed", "canceled")
# nightmareai/real-esrgan accepts a scale from 0 to 10.
MAX_FACTOR = 10
# The usual Standard Webhooks tolerance for the webhook-timestamp header.
SIGNATURE_TOLERANCE_SECONDS = 300
# Pages of GET /v1/predictions searched when reconciling a submission that
# may have started; the newest predictions come first.
RECONCILE_PAGES = 2


def webhook_key(secret):
    """Return the HMAC key inside a whsec_ secret; raise ValueError if invalid."""
    if not secret.startswith("whsec_"):
        raise ValueError("the secret does not start with 'whsec_'")
    encoded = secret.removeprefix("whsec_")
    try:
        # Secrets may come without base64 padding.
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("the part after 'whsec_' is not base64") from exc


def sign_webhook(secret, message_id, timestamp, body):
    """Return the v1 signature of a webhook, as Replicate computes it."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_webhook(secret, headers, body, *, now=None):
    """Raise CallbackRejected unless a webhook request carries a valid signature."""
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (message_id and timestamp and signatures):
        raise CallbackRejected(
            "The webhook-id, webhook-timestamp or webhook-signature header is missing."
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise CallbackRejected(
            f"webhook-timestamp {timestamp[:20]!r} is not a Unix time."
        ) from None

    now = time.time() if now is None else now
    if abs(now - sent_at) > SIGNATURE_TOLERANCE_SECONDS:
        raise CallbackRejected(
            f"webhook-timestamp is {int(now - sent_at)} s from now, outside the "
            f"{SIGNATURE_TOLERANCE_SECONDS} s tolerance."
        )

    expected = sign_webhook(secret, message_id, timestamp, body).partition(",")[2]
    expected_digest = base64.b64decode(expected)
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            digest = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(digest, expected_digest):
            return
    raise CallbackRejected("No v1 signature in webhook-signature matches the body.")


class ReplicateUpscaler(RemoteUpscaler):
    name = "replicate"
    display_name = "Replicate"
    api_base_setting = "REPLICATE_API_BASE"
    api_token_setting = "REPLICATE_API_TOKEN"

    def check_configuration(self):
        if not settings.REPLICATE_API_TOKEN:
            raise ImproperlyConfigured(
                "SMI_UPSCALERS includes 'replicate', but REPLICATE_API_TOKEN is not set."
            )
        if not settings.REPLICATE_WEBHOOK_SECRET:
            raise ImproperlyConfigured(
                "SMI_UPSCALERS includes 'replicate', but REPLICATE_WEBHOOK_SECRET is not set; "
                "read it from GET /v1/webhooks/default/secret (it starts with 'whsec_')."
            )
        try:
            webhook_key(settings.REPLICATE_WEBHOOK_SECRET)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"REPLICATE_WEBHOOK_SECRET is not a valid Replicate webhook secret: {exc}."
            ) from exc
        if not settings.REPLICATE_VERSION:
            owner, _, model = settings.REPLICATE_MODEL.partition("/")
            if not owner or not model or "/" in model:
                raise ImproperlyConfigured(
                    f"REPLICATE_MODEL={settings.REPLICATE_MODEL!r} is not of the form "
                    "'owner/name'; set it, or set REPLICATE_VERSION to a version id."
                )

    def accepts(self, job):
        return job.factor <= MAX_FACTOR and super().accepts(job)

    def request_body(self, job, source_url, webhook_url):
        body = {
            # Input names of nightmareai/real-esrgan.
            "input": {
                "image": source_url,
                "scale": job.factor,
                "face_enhance": settings.REPLICATE_FACE_ENHANCE,
            },
            "webhook": webhook_url,
            "webhook_events_filter": ["completed"],
        }
        if settings.REPLICATE_VERSION:
            body["version"] = settings.REPLICATE_VERSION
        return body

    def create_path(self):
        if settings.REPLICATE_VERSION:
            return "/v1/predictions"
        owner, _, model = settings.REPLICATE_MODEL.partition("/")
        return f"/v1/models/{quote(owner, safe='')}/{quote(model, safe='')}/predictions"

    def submit(self, job, *, source_url, webhook_url):
        body = self.request_body(job, source_url, webhook_url)
        data = self.client.request("POST", self.create_path(), json=body)
        status = self.parse_prediction(data)
        if not status.provider_job_id:
            raise ProviderError(
                "provider_bad_response",
                "Replicate accepted the prediction but returned no id.",
                transient=True,
                started=Started.UNKNOWN,
                provider_fault=True,
            )
        return status

    def get_status(self, provider_job_id):
        try:
            data = self.client.request(
                "GET", f"/v1/predictions/{quote(provider_job_id, safe='')}"
            )
        except ProviderError as exc:
            if exc.code == "provider_not_found":
                raise ProviderError(
                    "provider_job_not_found",
                    f"Replicate has no prediction {provider_job_id!r}.",
                    transient=True,
                ) from exc
            raise
        return self.parse_prediction(data, provider_job_id)

    can_reconcile = True

    def find_submission(self, source_url_hash):
        """Search the newest predictions for one whose input image URL has this hash.

        The source URL is signed for one submission, so a match is the
        prediction that submission started.
        """
        params = None
        for _page in range(RECONCILE_PAGES):
            data = self.client.request("GET", "/v1/predictions", params=params)
            for prediction in data.get("results") or []:
                prediction_input = prediction.get("input") or {}
                image = (
                    prediction_input.get("image")
                    if isinstance(prediction_input, dict)
                    else None
                )
                if isinstance(image, str) and hmac.compare_digest(
                    hashlib.sha256(image.encode()).hexdigest(), source_url_hash
                ):
                    return self.parse_prediction(prediction)
            next_url = data.get("next")
            if not next_url:
                return None
            # Only the cursor is taken from the next-page URL, so the request
            # stays on the configured API host.
            cursor = parse_qs(urlsplit(next_url).query).get("cursor")
            if not cursor:
                return None
            params = {"cursor": cursor[0]}
        return None

    def verify_callback(self, request):
        verify_webhook(settings.REPLICATE_WEBHOOK_SECRET, request.headers, request.body)

    def result_hosts(self):
        hosts = settings.REPLICATE_RESULT_HOSTS
        return frozenset(h.lower() for h in hosts) if hosts else None

    @staticmethod
    def parse_prediction(data, provider_job_id=None):
        """Return the ProviderStatus of a prediction object."""
        prediction_id = data.get("id") if isinstance(data.get("id"), str) else None
        prediction_id = prediction_id or provider_job_id or ""
        raw = str(data.get("status") or "")
        metrics = {}
        if isinstance(data.get("metrics"), dict):
            predict_time = data["metrics"].get("predict_time")
            if isinstance(predict_time, (int, float)) and not isinstance(
                predict_time, bool
            ):
                metrics["predict_time"] = predict_time
        if raw == "succeeded":
            output = data.get("output")
            # Real-ESRGAN models return one URI; others return a list of them.
            if isinstance(output, list):
                output = next((o for o in reversed(output) if isinstance(o, str)), None)
            return ProviderStatus(
                provider_job_id=prediction_id,
                state=ProviderState.SUCCEEDED,
                raw_status=raw,
                result_url=output if isinstance(output, str) and output else None,
                metrics=metrics,
            )
        if raw in FAILED_STATUSES:
            error = data.get("error") or f"Replicate reported the prediction {raw}."
            return ProviderStatus(
                provider_job_id=prediction_id,
                state=ProviderState.FAILED,
                raw_status=raw,
                error=str(error)[:500],
                metrics=metrics,
            )
        return ProviderStatus(
            provider_job_id=prediction_id, state=ProviderState.RUNNING, raw_status=raw
        )
