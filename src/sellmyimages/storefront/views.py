"""The storefront: the catalog, a product page with prices, and order pages."""

import logging

import pyvips
import smtplib

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import (
    require_http_methods,
    require_POST,
    require_safe,
)

from sellmyimages.catalog import images
from sellmyimages.delivery.views import plain, serve_job_output
from sellmyimages.jobs.exceptions import JobNotFound, JobValidationError
from sellmyimages.jobs.manager import ActionNotAllowed, job_manager
from sellmyimages.jobs.models import Status
from sellmyimages.orders import place_order, quote_image
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.storefront.thumbnails import thumbnail_for

logger = logging.getLogger(__name__)

SESSION_ORDERS = "smi_orders"
MAX_ORDERS_IN_SESSION = 50


def remember_order(request, job_id):
    orders = [str(job_id), *request.session.get(SESSION_ORDERS, [])]
    request.session[SESSION_ORDERS] = orders[:MAX_ORDERS_IN_SESSION]


def owns_order(request, job_id):
    return str(job_id) in request.session.get(SESSION_ORDERS, [])


@require_safe
def catalog(request):
    return render(request, "storefront/catalog.html", {"images": images.list_catalog()})


@require_safe
def thumbnail(request, name):
    try:
        path = images.catalog_path(name)
    except images.ImageRejected:
        raise Http404("No such catalog image.") from None
    # Only files the catalog lists reach libvips, so a stray SVG or other
    # file in the folder is never rendered.
    if path.suffix.lower() not in images.CATALOG_SUFFIXES:
        raise Http404("No such catalog image.")
    try:
        preview = thumbnail_for(path)
    except pyvips.Error as exc:
        logger.warning("event=thumbnail_failed image=%s error=%s", name[:80], exc)
        raise Http404("No preview for this image.") from None
    response = FileResponse(open(preview, "rb"), content_type="image/jpeg")
    response["Cache-Control"] = "public, max-age=3600"
    return response


@require_http_methods(["GET", "HEAD", "POST"])
def product(request, name):
    try:
        info, quotes = quote_image(catalog_image=name)
    except images.ImageRejected as exc:
        if exc.code == "catalog_image_not_found":
            raise Http404("No such catalog image.") from None
        return render(
            request, "storefront/product.html", {"name": name, "problem": str(exc)}, status=422
        )
    context = {"name": name, "info": info, "quotes": quotes, "email": ""}
    if request.method == "POST":
        context["email"] = request.POST.get("email", "")
        try:
            order = place_order(
                resolution=request.POST.get("resolution", ""),
                catalog_image=name,
                email=context["email"],
                actor="customer",
            )
        except (JobValidationError, images.ImageRejected, PaymentError) as exc:
            context["error"] = str(exc)
            return render(request, "storefront/product.html", context, status=400)
        remember_order(request, order.job.job_id)
        return redirect(order.checkout_url)
    return render(request, "storefront/product.html", context)


@require_safe
def order(request, job_id):
    try:
        job = job_manager.get_job(job_id)
    except JobNotFound:
        raise Http404("No such order.") from None
    context = {
        "job": job,
        "owns_order": owns_order(request, job.job_id),
        "finished": job.status in (Status.COMPLETED, Status.FAILED, Status.ABANDONED),
        "link_expired": bool(
            job.download_expires_at and job.download_expires_at <= timezone.now()
        ),
        "new_link_until": job_manager.new_link_available_until(job),
        "new_link_requests_left": job_manager.new_link_requests_left(job),
        "new_link_limit": settings.SMI_NEW_LINK_REQUESTS_PER_DAY,
    }
    return render(request, "storefront/order.html", context)


@require_POST
def order_new_link(request, job_id):
    """Email a new download link to the address on the order, for an expired one.

    The form carries no address: the link goes only to the job's email.
    """
    try:
        job_manager.send_new_link(job_id)
    except JobNotFound:
        raise Http404("No such order.") from None
    except ActionNotAllowed as exc:
        logger.info("event=new_link_rejected job_id=%s code=%s", job_id, exc.code)
        if exc.code == "rate_limited":
            messages.error(
                request,
                f"You have asked for {settings.SMI_NEW_LINK_REQUESTS_PER_DAY} new "
                "links in the last 24 hours. Please try again later, or contact the "
                "shop.",
            )
        else:
            messages.error(request, "A new link cannot be sent for this order.")
    except (smtplib.SMTPException, OSError) as exc:
        logger.error("event=new_link_failed job_id=%s error=%r", job_id, exc)
        messages.error(
            request, "We could not send the email just now. Please try again later."
        )
    else:
        messages.success(
            request, "We sent a new download link to the email address on this order."
        )
    return redirect("storefront:order", job_id=job_id)


@require_safe
def order_download(request, job_id):
    """Let the browser that placed the order download without the emailed link."""
    try:
        job = job_manager.get_job(job_id)
    except JobNotFound:
        raise Http404("No such order.") from None
    if not owns_order(request, job.job_id):
        return plain(403, "Use the link in your email to download this image.")
    if job.download_expires_at is None or job.download_token_hash is None:
        return plain(410, "This download is no longer available.")
    if job.download_expires_at <= timezone.now():
        return plain(410, "This download has expired.")
    return serve_job_output(request, job)
