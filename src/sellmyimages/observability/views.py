"""GET /metrics in the Prometheus text format, for loopback or a bearer token."""

import ipaddress
import logging
import secrets

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from sellmyimages.observability import metrics

logger = logging.getLogger(__name__)

# A reverse proxy on the same machine connects from loopback, so a request
# that carries one of these headers is treated as coming from outside.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def has_valid_token(request):
    expected = settings.SMI_METRICS_TOKEN
    if not expected:
        return False
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return secrets.compare_digest(token.strip().encode(), expected.encode())


def is_direct_loopback(request):
    if any(header in request.headers for header in FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@never_cache
@require_safe
def metrics_view(request):
    if has_valid_token(request):
        allowed = True
    else:
        allowed = settings.SMI_METRICS_ALLOW_LOOPBACK and is_direct_loopback(request)
    if not allowed:
        logger.info(
            "event=metrics_refused remote_addr=%s", request.META.get("REMOTE_ADDR")
        )
        if settings.SMI_METRICS_TOKEN:
            response = HttpResponse("A valid bearer token is required.\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        else:
            response = HttpResponse(
                "Metrics are served only to direct loopback requests; "
                "set SMI_METRICS_TOKEN to scrape from elsewhere.\n",
                status=403,
            )
        response["Content-Type"] = "text/plain; charset=utf-8"
        return response
    body, content_type = metrics.render()
    return HttpResponse(body, content_type=content_type)
