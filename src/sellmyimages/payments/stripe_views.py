"""Stripe's webhook endpoint and the pages Stripe Checkout sends the buyer back to."""

import logging
import re

import stripe
from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from sellmyimages.jobs.models import Job, Status
from sellmyimages.observability import metrics
from sellmyimages.payments.backends import get_payment_backend
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.payments.models import EventOutcome
from sellmyimages.payments.stripe_webhooks import (
    apply_checkout_session,
    receive_event,
    verify_event,
)

logger = logging.getLogger(__name__)

# Stripe's events are a few kilobytes. A body over this limit is not one of
# them, so it is rejected before it is read in full or parsed.
MAX_WEBHOOK_BYTES = 1024 * 1024

SESSION_ID = re.compile(r"cs_[A-Za-z0-9_]{1,250}")


def answer(status, message, **extra):
    return JsonResponse({"message": message, **extra}, status=status)


@csrf_exempt
@metrics.counts_webhooks("stripe")
@require_POST
def stripe_webhook(request):
    """Verify, store and process one Stripe event."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        logger.error(
            "event=stripe_webhook_unconfigured reason=STRIPE_WEBHOOK_SECRET is not set"
        )
        return answer(503, "Webhooks are not configured.")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return answer(400, "Invalid Content-Length.")
    if declared > MAX_WEBHOOK_BYTES:
        logger.warning("event=stripe_webhook_too_large bytes=%d", declared)
        return answer(413, f"The body is larger than {MAX_WEBHOOK_BYTES} bytes.")
    body = request.read(MAX_WEBHOOK_BYTES + 1)
    if len(body) > MAX_WEBHOOK_BYTES:
        return answer(413, f"The body is larger than {MAX_WEBHOOK_BYTES} bytes.")

    try:
        event = verify_event(body, request.headers.get("Stripe-Signature"))
    except stripe.SignatureVerificationError as exc:
        logger.warning("event=stripe_webhook_rejected reason=%s", exc.user_message)
        return answer(400, "Invalid signature.")
    except ValueError:
        logger.warning("event=stripe_webhook_rejected reason=invalid payload")
        return answer(400, "Invalid payload.")

    row, duplicate = receive_event(event)
    if row.outcome == EventOutcome.FAILED:
        return answer(
            500, "Processing failed; deliver the event again.", event_id=row.event_id
        )
    return answer(
        200, row.detail or row.outcome, outcome=row.outcome, duplicate=duplicate
    )


def stripe_job(job_id):
    job = Job.objects.filter(job_id=job_id, payment_provider="stripe").first()
    if job is None:
        raise Http404("No such order.")
    return job


@require_safe
def stripe_success(request):
    """Confirm a paid session at once instead of waiting for its webhook."""
    from sellmyimages.storefront.views import remember_order

    session_id = request.GET.get("session_id", "")
    if not SESSION_ID.fullmatch(session_id):
        raise Http404("No such checkout session.")
    job = Job.objects.filter(
        checkout_session_id=session_id, payment_provider="stripe"
    ).first()
    if job is None:
        raise Http404("No such checkout session.")
    remember_order(request, job.job_id)
    try:
        session = get_payment_backend("stripe").retrieve_session(session_id)
    except PaymentError:
        messages.info(
            request,
            "Stripe has not confirmed your payment yet; "
            "this page updates when it does.",
        )
        return redirect("storefront:order", job_id=job.job_id)
    if session.get("payment_status") == "paid":
        with transaction.atomic():
            apply_checkout_session(session, actor="success_page")
    return redirect("storefront:order", job_id=job.job_id)


@require_safe
def stripe_cancel(request, job_id):
    """Tell the buyer the order stays open, with a way back to the checkout."""
    job = stripe_job(job_id)
    context = {"job": job, "can_resume": job.status == Status.AWAITING_PAYMENT}
    return render(request, "payments/stripe_cancelled.html", context)


@require_safe
def stripe_resume(request, job_id):
    """Send the buyer back to the job's Checkout Session while it is still open."""
    job = stripe_job(job_id)
    if job.status == Status.AWAITING_PAYMENT and job.checkout_session_id:
        try:
            session = get_payment_backend("stripe").retrieve_session(
                job.checkout_session_id
            )
        except PaymentError:
            session = {}
        if session.get("status") == "open" and session.get("url"):
            return redirect(session["url"])
    messages.info(
        request, "This checkout is closed. You can place a new order at any time."
    )
    return redirect("storefront:order", job_id=job.job_id)
