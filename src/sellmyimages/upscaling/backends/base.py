"""The interface every upscaling engine implements."""

from dataclasses import dataclass, field
from pathlib import Path


class UpscaleError(Exception):
    """An upscale failed; `transient` is True if trying again may succeed.

    `retry_after` is the minimum delay before a retry, in seconds, that the
    provider requested (an HTTP Retry-After header), or None.
    """

    def __init__(self, code, message, *, transient, retry_after=None):
        self.code = code
        self.transient = transient
        self.retry_after = retry_after
        super().__init__(message)


@dataclass(frozen=True)
class UpscaleOutput:
    path: Path
    width: int
    height: int
    format: str
    size_bytes: int
    sha256: str
    credits_charged: object = None


class Upscaler:
    name = ""
    # True if upscale() returns the finished file in the same call; remote
    # engines return later, through a callback or polling.
    synchronous = True

    def upscale(self, job, destination):
        """Produce the job's output at destination and return an UpscaleOutput."""
        raise NotImplementedError


class Started:
    """Whether a failed submission may have started a job at the provider."""

    # The provider never accepted the request: connection refused, 429, 5xx.
    NO = "no"
    # The request may have reached the provider: a read timeout or a crash.
    UNKNOWN = "unknown"


class ProviderError(UpscaleError):
    """A remote provider's API call failed.

    `started` (a Started value) tells whether a submission may be live at
    the provider, which decides whether the job may move to another one.
    `provider_fault` is True when the provider itself is unavailable (it
    counts towards the circuit breaker) rather than the input being bad.
    """

    def __init__(
        self,
        code,
        message,
        *,
        transient,
        retry_after=None,
        started=Started.NO,
        provider_fault=False,
    ):
        super().__init__(code, message, transient=transient, retry_after=retry_after)
        self.started = started
        self.provider_fault = provider_fault


class ProviderState:
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class ProviderStatus:
    """A remote job as its provider reports it."""

    provider_job_id: str
    state: str
    # The provider's own status word, for the audit trail.
    raw_status: str = ""
    result_url: str | None = None
    # Credits the provider reports for the job, or None if it reports none.
    credits: object = None
    error: str = ""
    # Extra figures worth keeping, such as Replicate's predict_time.
    metrics: dict = field(default_factory=dict)
    # False when the status comes from an unverified callback body because
    # the provider's status API could not be asked.
    confirmed: bool = True


class RemoteUpscaler(Upscaler):
    """A provider reached over HTTP: submit now, collect the result later.

    The result arrives through a callback to our webhook URL or through
    polling. Either way the outcome is read back from the provider's API by
    confirm_callback() or get_status(). Only Upsampler's callback-only mode
    acts on a callback body, and then fetches results from allowed hosts only.
    """

    synchronous = False
    # Whether get_status() can be called; without it only callbacks and the
    # processing deadline move a job on.
    can_poll = True

    def accepts(self, job):
        """Return True if this provider may produce the job's output size."""
        from sellmyimages.jobs.pricing import max_output_megapixels

        output_pixels = job.source_width * job.source_height * job.factor**2
        return output_pixels <= max_output_megapixels(self.name) * 1_000_000

    # The provider's name in messages, and the settings holding its API base
    # URL and token; each subclass sets them.
    display_name = ""
    api_base_setting = ""
    api_token_setting = ""
    _client = None

    @property
    def client(self):
        """Return the provider's ProviderClient, created on first use."""
        if self._client is None:
            from django.conf import settings

            # Imported here because the HTTP client module imports this one.
            from sellmyimages.upscaling.backends.http import ProviderClient

            self._client = ProviderClient(
                self.display_name,
                getattr(settings, self.api_base_setting),
                getattr(settings, self.api_token_setting),
            )
        return self._client

    def close(self):
        """Release the provider's HTTP connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def upscale(self, job, destination):
        raise UpscaleError(
            "not_synchronous",
            f"{self.name!r} is a remote provider; submit the job instead.",
            transient=False,
        )

    def check_configuration(self):
        """Raise ImproperlyConfigured naming the first missing setting."""

    def submit(self, job, *, source_url, webhook_url):
        """Start the job and return its ProviderStatus; raise ProviderError."""
        raise NotImplementedError

    def get_status(self, provider_job_id):
        """Return the provider's current ProviderStatus of a job."""
        raise NotImplementedError

    def confirm_callback(self, provider_job_id, payload):
        """Return the status to act on after a callback named `provider_job_id`."""
        return self.get_status(provider_job_id)

    # Whether find_submission() can tell if a submission that may have
    # started is live at the provider.
    can_reconcile = False

    def find_submission(self, source_url_hash):
        """Return the status of the job whose source URL has this SHA-256, or None."""
        raise NotImplementedError

    def verify_callback(self, request):
        """Raise CallbackRejected unless the request came from the provider."""

    def callback_job_id(self, payload):
        """Return the provider's job id named in a callback body, or None."""
        value = payload.get("id") if isinstance(payload, dict) else None
        return value if isinstance(value, str) and value else None

    def result_hosts(self):
        """Return the hosts result URLs may use, or None for any public host."""
        return None


class CallbackRejected(Exception):
    """A callback request failed verification."""
