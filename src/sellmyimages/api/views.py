"""The JSON API under /api/v1, with its OpenAPI schema at /api/v1/openapi.json."""

import logging
from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.urls import reverse
from django.http import Http404
from ninja import NinjaAPI, Schema, Status
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import Field

from sellmyimages.catalog.images import ImageRejected
from sellmyimages.jobs.exceptions import JobNotFound, JobValidationError
from sellmyimages.orders import place_order, quote_image
from sellmyimages.payments.backends.base import PaymentError

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="Sell My Images API",
    version="1.0.0",
    urls_namespace="api",
    description="Quote, buy and follow upscaled copies of images.",
)


class ErrorDetail(Schema):
    code: str
    message: str
    field: str | None = None


class ErrorOut(Schema):
    error: ErrorDetail


class ImageReference(Schema):
    catalog_image: str | None = Field(None, description="Name of an image in the shop's catalog.")
    image_url: str | None = Field(
        None, description="An http(s) URL on one of the shop's allowed image hosts."
    )


class QuoteOut(Schema):
    resolution: str
    output_width: int
    output_height: int
    output_megapixels: str
    credits: str
    price: str
    currency: str


class QuotesOut(Schema):
    source_width: int
    source_height: int
    quotes: list[QuoteOut]


class JobIn(ImageReference):
    resolution: str = Field(..., description="One of the shop's resolutions, such as 4x or 8x.")
    email: str | None = None
    post_id: str | None = Field(None, max_length=64)
    attachment_id: str | None = Field(None, max_length=64)


class JobCreatedOut(Schema):
    job_id: UUID
    status: str
    price: str
    currency: str
    checkout_url: str
    status_url: str


class JobOut(Schema):
    job_id: UUID
    status: str
    payment_status: str
    resolution: str
    price: str
    currency: str
    created_at: datetime
    paid_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    download_ready: bool
    download_expires_at: datetime | None
    failure_code: str | None


def error(request, status, code, message, field=None):
    body = {"error": {"code": code, "message": message, "field": field}}
    return api.create_response(request, body, status=status)


@api.exception_handler(NinjaValidationError)
def on_schema_error(request, exc):
    first = exc.errors[0] if exc.errors else {}
    location = [str(part) for part in first.get("loc", []) if part not in ("body", "payload")]
    field = ".".join(location) or None
    return error(request, 400, "invalid_request", first.get("msg", "Invalid request."), field)


@api.exception_handler(HttpError)
def on_http_error(request, exc):
    code = "invalid_request" if exc.status_code == 400 else f"http_{exc.status_code}"
    return error(request, exc.status_code, code, str(exc))


@api.exception_handler(Http404)
def on_not_found(request, exc):
    return error(request, 404, "not_found", "Not found.")


@api.exception_handler(JobValidationError)
def on_job_validation_error(request, exc):
    return error(request, 400, "invalid_" + exc.field, str(exc), exc.field)


@api.exception_handler(ImageRejected)
def on_image_rejected(request, exc):
    return error(request, 400, exc.code, str(exc), "image")


@api.exception_handler(JobNotFound)
def on_job_not_found(request, exc):
    return error(request, 404, "job_not_found", "No job has that id.")


@api.exception_handler(PaymentError)
def on_payment_error(request, exc):
    logger.error("event=checkout_failed error=%s", exc)
    status = 503 if exc.transient else 400
    return error(request, status, "payment_unavailable", str(exc))


@api.post("/quotes", response={200: QuotesOut, 400: ErrorOut}, summary="Price an image")
def create_quote(request, payload: ImageReference):
    """Measure the image on the server and price each resolution on offer."""
    info, quotes = quote_image(catalog_image=payload.catalog_image, image_url=payload.image_url)
    return {
        "source_width": info.width,
        "source_height": info.height,
        "quotes": [quote.as_dict() for quote in quotes],
    }


@api.post(
    "/jobs",
    response={201: JobCreatedOut, 400: ErrorOut, 503: ErrorOut},
    summary="Buy an upscale",
)
def create_job(request, payload: JobIn):
    """Create a job awaiting payment and return where the customer pays."""
    order = place_order(
        resolution=payload.resolution,
        catalog_image=payload.catalog_image,
        image_url=payload.image_url,
        email=payload.email or "",
        post_id=payload.post_id or "",
        attachment_id=payload.attachment_id or "",
        actor="api",
    )
    job = order.job
    status_path = reverse("storefront:order", args=[job.job_id])
    return Status(201, {
        "job_id": job.job_id,
        "status": job.status,
        "price": str(job.customer_price),
        "currency": job.currency,
        "checkout_url": order.checkout_url,
        "status_url": settings.PUBLIC_BASE_URL + status_path,
    })


@api.get(
    "/jobs/{job_id}",
    response={200: JobOut, 404: ErrorOut},
    summary="Follow a job",
    url_name="job-detail",
)
def get_job(request, job_id: str):
    """Return what the customer may see of a job: never its email or token."""
    from sellmyimages.jobs.manager import job_manager

    job = job_manager.get_job(job_id)
    return {
        "job_id": job.job_id,
        "status": job.status,
        "payment_status": job.payment_status,
        "resolution": job.resolution,
        "price": str(job.customer_price),
        "currency": job.currency,
        "created_at": job.created_at,
        "paid_at": job.paid_at,
        "completed_at": job.completed_at,
        "failed_at": job.failed_at,
        "download_ready": job.is_download_ready,
        "download_expires_at": job.download_expires_at,
        "failure_code": job.failure_code or None,
    }
