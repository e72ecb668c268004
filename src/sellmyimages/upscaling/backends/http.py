"""HTTP calls to provider APIs, with failures sorted into ProviderError kinds.

The API base URLs come from settings, so these requests use a plain httpx
client. Result files, whose URLs the providers choose, go through the
guarded fetcher instead (sellmyimages.fetching).
"""

import logging

import time

import httpx
from django.conf import settings

from sellmyimages.fetching import parse_retry_after
from sellmyimages.observability import metrics
from sellmyimages.upscaling.backends.base import ProviderError, Started

logger = logging.getLogger(__name__)

# Phrases in a provider's error message that mean the account, not the
# image, is the problem; the job can still be done by another provider.
ACCOUNT_PHRASES = (
    "invalid api key",
    "unauthorized",
    "unauthenticated",
    "insufficient credit",
    "out of credit",
    "billing",
)
# Phrases that mean the input itself cannot be processed, so a retry would
# fail the same way. The list follows the retry rules of cedarconnor's
# ComfyUI Upsampler nodes, the only published client that has any.
INPUT_PHRASES = (
    "unsupported",
    "not allowed",
    "exceed",
    "too large",
    "too big",
    "invalid image",
    "cannot identify image",
    "could not read",
    "out of memory",
)
MAX_MESSAGE_LENGTH = 500


def classify_message(message):
    """Return "account", "input" or "" for a provider's error message."""
    text = (message or "").lower()
    if any(phrase in text for phrase in ACCOUNT_PHRASES):
        return "account"
    if any(phrase in text for phrase in INPUT_PHRASES):
        return "input"
    return ""


def error_text(response):
    """Return the error message from a provider's JSON error body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_MESSAGE_LENGTH]
    if isinstance(body, dict):
        for key in ("error", "detail", "message", "title"):
            if body.get(key):
                value = body[key]
                # Upsampler's `error` is sometimes an object or a list.
                return str(value)[:MAX_MESSAGE_LENGTH]
    return str(body)[:MAX_MESSAGE_LENGTH]


class ProviderClient:
    """A JSON API client for one provider, raising ProviderError on failure."""

    def __init__(self, provider, base_url, token):
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        timeout = float(settings.SMI_PROVIDER_TIMEOUT_SECONDS)
        self.client = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": "SellMyImages/1.0",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
        )

    def close(self):
        self.client.close()

    def request(self, method, path, *, json=None, params=None):
        """Send a request and return the decoded JSON body of a 2xx response."""
        started = time.monotonic()
        outcome = "ok"
        try:
            return self.send(method, path, json=json, params=params)
        except ProviderError as exc:
            outcome = exc.code
            raise
        finally:
            # Labels use the lower-case name that SMI_UPSCALERS and the webhook
            # counts use, not the display name in messages.
            metrics.observe_provider_call(
                self.provider.lower(), time.monotonic() - started, outcome
            )

    def send(self, method, path, *, json=None, params=None):
        try:
            response = self.client.request(method, path, json=json, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ProviderError(
                "provider_unreachable",
                f"{self.provider} could not be reached at {self.base_url}: {exc}",
                transient=True,
                started=Started.NO,
                provider_fault=True,
            ) from exc
        except httpx.TimeoutException as exc:
            raise ProviderError(
                "provider_timeout",
                f"{self.provider} did not answer {method} {path} in time: {exc!r}",
                transient=True,
                started=Started.UNKNOWN,
                provider_fault=True,
            ) from exc
        except httpx.TransportError as exc:
            # The connection broke after the request may have been sent.
            raise ProviderError(
                "provider_connection_lost",
                f"The connection to {self.provider} broke during {method} {path}: {exc!r}",
                transient=True,
                started=Started.UNKNOWN,
                provider_fault=True,
            ) from exc
        if response.status_code >= 300:
            raise self.status_error(method, path, response)
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(
                "provider_bad_response",
                f"{self.provider} answered {method} {path} with HTTP "
                f"{response.status_code} but no JSON body.",
                transient=True,
                started=Started.UNKNOWN,
                provider_fault=True,
            ) from exc
        if not isinstance(body, dict):
            raise ProviderError(
                "provider_bad_response",
                f"{self.provider} answered {method} {path} with JSON that is not an object.",
                transient=True,
                started=Started.UNKNOWN,
                provider_fault=True,
            )
        return body

    def status_error(self, method, path, response):
        """Return the ProviderError for a non-2xx response.

        A 4xx that describes the input is permanent. 429, 5xx and account
        problems (401, 402, 403) are transient for the job, because another
        provider or a later attempt may succeed, and count against the
        provider's circuit.
        """
        status = response.status_code
        message = error_text(response)
        text = (
            f"{self.provider} answered {method} {path} with HTTP {status}: "
            f"{message or 'no message'}"
        )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            return ProviderError(
                "provider_rate_limited",
                text,
                transient=True,
                retry_after=retry_after,
                provider_fault=True,
            )
        if status >= 500 or status == 408:
            return ProviderError(
                "provider_unavailable",
                text,
                transient=True,
                retry_after=retry_after,
                provider_fault=True,
            )
        kind = classify_message(message)
        if status in (401, 402, 403) or kind == "account":
            return ProviderError(
                "provider_account_error", text, transient=True, provider_fault=True
            )
        if status in (404, 405) and kind != "input":
            # The endpoint itself is missing: a wrong base URL, not a bad image.
            return ProviderError(
                "provider_not_found", text, transient=True, provider_fault=True
            )
        if status in (300, 301, 302, 303, 307, 308):
            return ProviderError(
                "provider_redirected", text, transient=True, provider_fault=True
            )
        return ProviderError("provider_rejected_input", text, transient=False)
