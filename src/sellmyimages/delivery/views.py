"""GET /downloads/<token>: the customer's time-limited download link."""

import logging
from pathlib import Path

from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe

from sellmyimages.delivery.streaming import file_response
from sellmyimages.jobs.manager import job_manager
from sellmyimages.jobs.models import Status

logger = logging.getLogger(__name__)


def plain(status, message):
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


def download_filename(job):
    stem = Path(job.source_ref).stem if job.source_kind == "catalog" else "image"
    stem = "".join(c for c in stem if c.isalnum() or c in "-_")[:80] or "image"
    return f"{stem}-{job.resolution}.{job.output_format or 'png'}"


def serve_job_output(request, job):
    """Stream a completed job's file and count each whole-file download."""
    if job.status != Status.COMPLETED or not job.output_path:
        return plain(404, "This download link is not valid.")
    path = Path(job.output_path)
    if not path.is_file():
        return plain(410, "This file is no longer kept. Contact the shop if you still need it.")
    response, whole_file = file_response(request, path, download_filename(job))
    if whole_file and request.method == "GET" and response.status_code in (200, 206):
        job_manager.record_download(job.job_id)
        logger.info("event=download_started job_id=%s", job.job_id)
    return response


@require_safe
def download(request, token):
    # The lookup is by SHA-256 of the token, so the database never sees the
    # token and the time taken does not depend on how much of it matches.
    job = job_manager.find_by_download_token(token)
    if job is None:
        return plain(404, "This download link is not valid.")
    if job.download_expires_at is None or job.download_expires_at <= timezone.now():
        return plain(
            410,
            "This download link has expired. You can ask for a new one on your order page.",
        )
    return serve_job_output(request, job)
