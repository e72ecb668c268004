"""Upsampler (upsampler.com): precise upscaling through its HTTP API.

The API is not formally documented. The request and response fields used
here are the ones that two working clients agree on: the sell-my-images
WordPress plugin and cedarconnor's ComfyUI nodes. A job is created with
POST /precise-upscale, looked up with GET /status/{id}, and reports
IN_QUEUE, IN_PROGRESS, SUCCESS or FAILED. Callbacks are not signed.
"""

import logging
from decimal import Decimal, InvalidOperation
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from sellmyimages.upscaling.backends.base import (
    ProviderError,
    ProviderState,
    ProviderStatus,
    RemoteUpscaler,
    Started,
)

logger = logging.getLogger(__name__)

INPUT_IMAGE_TYPES = ("realism", "anime", "universal")
# Precise upscaling accepts factors from 1 to 16.
MAX_FACTOR = 16
LEVEL_RANGE = range(0, 11)


def parse_level(name):
    """Return setting `name` as an int from 0 to 10, or None when it is empty."""
    raw = getattr(settings, name)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a whole number from 0 to 10, or empty to leave it out."
        ) from None
    if value not in LEVEL_RANGE:
        raise ImproperlyConfigured(f"{name}={raw!r} is not between 0 and 10.")
    return value


def parse_credits(value):
    """Return a reported credit cost as a Decimal, or None if there is none."""
    if value is None or isinstance(value, bool):
        return None
    try:
        credits = Decimal(str(value))
    except InvalidOperation:
        return None
    return credits if credits.is_finite() and credits >= 0 else None


class UpsamplerUpscaler(RemoteUpscaler):
    name = "upsampler"
    display_name = "Upsampler"
    api_base_setting = "UPSAMPLER_API_BASE"
    api_token_setting = "UPSAMPLER_API_KEY"

    def check_configuration(self):
        if not settings.UPSAMPLER_API_KEY:
            raise ImproperlyConfigured(
                "SMI_UPSCALERS includes 'upsampler', but UPSAMPLER_API_KEY is not set; "
                "create an API key in the upsampler.com account."
            )
        if not settings.UPSAMPLER_API_BASE.startswith(("https://", "http://")):
            raise ImproperlyConfigured(
                f"UPSAMPLER_API_BASE={settings.UPSAMPLER_API_BASE!r} is not an http(s) URL."
            )
        if settings.UPSAMPLER_INPUT_IMAGE_TYPE not in INPUT_IMAGE_TYPES:
            raise ImproperlyConfigured(
                f"UPSAMPLER_INPUT_IMAGE_TYPE={settings.UPSAMPLER_INPUT_IMAGE_TYPE!r} is not "
                f"one of {', '.join(INPUT_IMAGE_TYPES)}."
            )
        parse_level("UPSAMPLER_CREATIVITY")
        parse_level("UPSAMPLER_DETAIL")
        if (
            not settings.UPSAMPLER_CONFIRM_WITH_STATUS_API
            and not settings.UPSAMPLER_RESULT_HOSTS
        ):
            raise ImproperlyConfigured(
                "UPSAMPLER_CONFIRM_WITH_STATUS_API is off, so UPSAMPLER_RESULT_HOSTS must "
                "list the hosts that Upsampler's result URLs use."
            )

    def accepts(self, job):
        return job.factor <= MAX_FACTOR and super().accepts(job)

    @property
    def can_poll(self):
        return settings.UPSAMPLER_CONFIRM_WITH_STATUS_API

    def request_body(self, job, source_url, webhook_url):
        upscale_input = {
            "imageUrl": source_url,
            "upscaleFactor": job.factor,
            "inputImageType": settings.UPSAMPLER_INPUT_IMAGE_TYPE,
        }
        creativity = parse_level("UPSAMPLER_CREATIVITY")
        if creativity is not None:
            upscale_input["globalCreativity"] = creativity
        detail = parse_level("UPSAMPLER_DETAIL")
        if detail is not None:
            upscale_input["detail"] = detail
        return {"input": upscale_input, "webhook": webhook_url}

    def submit(self, job, *, source_url, webhook_url):
        body = self.request_body(job, source_url, webhook_url)
        data = self.client.request("POST", "/precise-upscale", json=body)
        status = self.parse_status(data)
        if not status.provider_job_id:
            raise ProviderError(
                "provider_bad_response",
                "Upsampler accepted the job but returned no job id.",
                transient=True,
                started=Started.UNKNOWN,
                provider_fault=True,
            )
        return status

    def get_status(self, provider_job_id):
        if not self.can_poll:
            raise ProviderError(
                "status_api_disabled",
                "UPSAMPLER_CONFIRM_WITH_STATUS_API is off, so job status cannot be looked up.",
                transient=True,
            )
        try:
            data = self.client.request(
                "GET", f"/status/{quote(provider_job_id, safe='')}"
            )
        except ProviderError as exc:
            if exc.code == "provider_not_found":
                raise ProviderError(
                    "provider_job_not_found",
                    f"Upsampler has no job {provider_job_id!r}.",
                    transient=True,
                ) from exc
            raise
        return self.parse_status(data, provider_job_id)

    def confirm_callback(self, provider_job_id, payload):
        if self.can_poll:
            return self.get_status(provider_job_id)
        # Without a status API the callback body is all there is: its result
        # URL is fetched only from UPSAMPLER_RESULT_HOSTS, and its failure is
        # treated as unconfirmed, so it can at most cause a resubmission.
        status = self.parse_status(payload, provider_job_id)
        return ProviderStatus(
            provider_job_id=status.provider_job_id,
            state=status.state,
            raw_status=status.raw_status,
            result_url=status.result_url,
            credits=status.credits,
            error=status.error,
            confirmed=False,
        )

    def result_hosts(self):
        hosts = settings.UPSAMPLER_RESULT_HOSTS
        return frozenset(h.lower() for h in hosts) if hosts else None

    @staticmethod
    def parse_status(data, provider_job_id=None):
        """Return the ProviderStatus in a create, status or callback body."""
        job_id = data.get("id") if isinstance(data.get("id"), str) else None
        job_id = job_id or provider_job_id or ""
        raw = str(data.get("status") or "")
        credits = parse_credits(data.get("creditCost"))
        if raw == "SUCCESS":
            url = data.get("imageUrl")
            return ProviderStatus(
                provider_job_id=job_id,
                state=ProviderState.SUCCEEDED,
                raw_status=raw,
                result_url=url if isinstance(url, str) and url else None,
                credits=credits,
            )
        if raw == "FAILED":
            return ProviderStatus(
                provider_job_id=job_id,
                state=ProviderState.FAILED,
                raw_status=raw,
                credits=credits,
                error=str(
                    data.get("error") or "Upsampler reported FAILED without a reason."
                )[:500],
            )
        # IN_QUEUE, IN_PROGRESS and any status word not seen before all mean
        # the job is still running; the processing deadline bounds the wait.
        return ProviderStatus(
            provider_job_id=job_id,
            state=ProviderState.RUNNING,
            raw_status=raw,
            credits=credits,
        )
