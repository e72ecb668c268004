"""The local test checkout page: Pay and Cancel buttons, test mode only."""

import logging
import secrets

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from sellmyimages.jobs.exceptions import InvalidTransition, JobValidationError
from sellmyimages.jobs.models import Job, Status
from sellmyimages.payments.backends.local import require_test_mode
from sellmyimages.payments.backends.base import PaymentError
from sellmyimages.payments.service import confirm_payment

logger = logging.getLogger(__name__)


@require_http_methods(["GET", "HEAD", "POST"])
def local_checkout(request, session_id):
    try:
        require_test_mode()
    except PaymentError:
        raise Http404("The local test checkout is disabled.") from None
    job = Job.objects.filter(checkout_session_id=session_id, payment_provider="local").first()
    if job is None:
        raise Http404("No such checkout session.")
    context = {"job": job, "session_id": session_id, "email": job.email}
    if job.status not in (Status.AWAITING_PAYMENT, Status.ABANDONED) or job.paid_at:
        return redirect("storefront:order", job_id=job.job_id)
    if request.method != "POST":
        return render(request, "payments/local_checkout.html", context)

    if request.POST.get("action") == "cancel":
        messages.info(request, "Payment cancelled. You can buy again at any time.")
        return redirect("storefront:order", job_id=job.job_id)
    email = request.POST.get("email", "").strip() or job.email
    context["email"] = email
    if not email:
        context["error"] = "Enter the email address where we send your download link."
        return render(request, "payments/local_checkout.html", context, status=400)
    try:
        confirm_payment(
            job.job_id,
            payment_intent_id=f"lpi_{secrets.token_hex(12)}",
            amount_paid=job.customer_price,
            currency=job.currency,
            email=email,
            actor="local_checkout",
        )
    except JobValidationError as exc:
        context["error"] = str(exc)
        return render(request, "payments/local_checkout.html", context, status=400)
    except InvalidTransition:
        logger.info("event=local_checkout_repeat job_id=%s", job.job_id)
    return redirect("storefront:order", job_id=job.job_id)
