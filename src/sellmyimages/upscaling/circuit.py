"""Circuit breakers for remote providers, and the choice of engine for a job.

Each provider's circuit is a CircuitState row, so every web and worker
process reads the same state. SMI_CIRCUIT_FAILURE_THRESHOLD transient
failures in a row, across jobs, open the circuit: for
SMI_CIRCUIT_COOLDOWN_SECONDS new attempts go to the next engine in
SMI_UPSCALERS. After the cool-down one attempt at a time probes the provider
(half-open); a success closes the circuit and a failure opens it again.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from sellmyimages.jobs.pricing import max_output_megapixels
from sellmyimages.upscaling.backends import get_upscaler
from sellmyimages.upscaling.models import CircuitState

logger = logging.getLogger(__name__)


def cooldown():
    return timedelta(seconds=float(settings.SMI_CIRCUIT_COOLDOWN_SECONDS))


def get_state(provider):
    """Return the provider's CircuitState row, creating a closed one if missing."""
    try:
        with transaction.atomic():
            state, _created = CircuitState.objects.get_or_create(provider=provider)
    except IntegrityError:
        # Another process created the row between the get and the create.
        state = CircuitState.objects.get(provider=provider)
    return state


def is_open(provider, *, now=None):
    """Return True while the provider's cool-down runs; this takes no probe."""
    now = now or timezone.now()
    return CircuitState.objects.filter(provider=provider, retry_at__gt=now).exists()


def allows(provider, *, now=None):
    """Return True if a new attempt may go to `provider` now.

    Once the cool-down is over, only the caller that moves retry_at forward
    gets True, so one attempt at a time probes a provider that was failing.
    """
    now = now or timezone.now()
    state = CircuitState.objects.filter(provider=provider).first()
    if state is None or state.retry_at is None:
        return True
    if state.retry_at > now:
        return False
    probe_taken = CircuitState.objects.filter(
        pk=state.pk, retry_at=state.retry_at
    ).update(retry_at=now + cooldown())
    if probe_taken:
        logger.info(
            "event=circuit_half_open provider=%s failures=%d",
            provider,
            state.consecutive_failures,
        )
    return bool(probe_taken)


def record_success(provider):
    """Close the provider's circuit and reset its failure count."""
    closed = (
        CircuitState.objects.filter(provider=provider)
        .exclude(consecutive_failures=0, retry_at=None)
        .update(
            consecutive_failures=0, retry_at=None, opened_at=None, last_failure_code=""
        )
    )
    if closed:
        logger.info("event=circuit_closed provider=%s", provider)


def record_failure(provider, code):
    """Count a transient failure; open the circuit at the threshold."""
    state = get_state(provider)
    now = timezone.now()
    with transaction.atomic():
        CircuitState.objects.filter(pk=state.pk).update(
            consecutive_failures=F("consecutive_failures") + 1, last_failure_code=code
        )
        state.refresh_from_db()
        if state.consecutive_failures < settings.SMI_CIRCUIT_FAILURE_THRESHOLD:
            return state
        was_open = state.opened_at is not None
        state.retry_at = now + cooldown()
        state.opened_at = state.opened_at or now
        state.save(update_fields=["retry_at", "opened_at", "updated_at"])
    log = logger.info if was_open else logger.warning
    log(
        "event=circuit_opened provider=%s failures=%d code=%s cooldown_seconds=%s",
        provider,
        state.consecutive_failures,
        code,
        settings.SMI_CIRCUIT_COOLDOWN_SECONDS,
    )
    return state


def accepts(upscaler, job):
    """Return True if the engine may produce this job's output size."""
    check = getattr(upscaler, "accepts", None)
    if check is not None:
        return check(job)
    output_pixels = job.source_width * job.source_height * job.factor**2
    return output_pixels <= max_output_megapixels(upscaler.name) * 1_000_000


def has_alternative(job, *, exclude):
    """Return True if an engine other than `exclude` could take the job now."""
    now = timezone.now()
    for name in settings.SMI_UPSCALERS:
        if name == exclude:
            continue
        upscaler = get_upscaler(name)
        if accepts(upscaler, job) and (
            upscaler.synchronous or not is_open(name, now=now)
        ):
            return True
    return False


def choose_upscaler(job, *, pinned=None):
    """Return the engine for the job's next attempt.

    `pinned` names the provider that must be used because a submission
    there may still be live. Otherwise the first engine in SMI_UPSCALERS
    that can produce the output size and whose circuit allows an attempt is
    chosen. When every eligible circuit is open, the provider whose
    cool-down ends first gets the attempt.
    """
    if pinned:
        return get_upscaler(pinned)
    candidates = [get_upscaler(name) for name in settings.SMI_UPSCALERS]
    eligible = [upscaler for upscaler in candidates if accepts(upscaler, job)]
    if not eligible:
        # The first engine reports the size problem when it runs.
        return candidates[0]
    for upscaler in eligible:
        if upscaler.synchronous or allows(upscaler.name):
            return upscaler
    retry_times = dict(
        CircuitState.objects.filter(
            provider__in=[u.name for u in eligible]
        ).values_list("provider", "retry_at")
    )
    return min(eligible, key=lambda u: retry_times.get(u.name) or timezone.now())
