"""The Jobs admin: find any job, read its history, and act on it.

Every action goes through the JobManager, so the admin follows the same
transition rules as the rest of the service and records the acting user
as "admin:<username>" on the job's audit trail.
"""

import datetime
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from sellmyimages.jobs.exceptions import JobError
from sellmyimages.jobs.manager import (
    MAX_EXTEND_HOURS,
    REFUND_REASON_MAX_LENGTH,
    RETRY_RESULTS,
    SEARCH_FIELDS,
    annotate_money,
    day_bounds,
    job_manager,
)
from sellmyimages.jobs.models import Job, PaymentStatus, Status
from sellmyimages.payments.backends.base import PaymentError

logger = logging.getLogger(__name__)

# A bulk action reports at most this many failed jobs one by one.
MAX_ERROR_MESSAGES = 20


def admin_actor(request):
    return f"admin:{request.user.get_username()}"[:128]


def format_money(value):
    """Format an amount with two decimals, or four when the cents hide a part."""
    if value is None:
        return "-"
    cents = value.quantize(Decimal("0.01"))
    return f"{cents}" if cents == value else f"{value.quantize(Decimal('0.0001'))}"


# Filters


class CreatedDateRangeFilter(admin.ListFilter):
    """Jobs created between two days, both included (UTC)."""

    title = "date created (range)"
    template = "admin/jobs/job/date_range_filter.html"
    parameter_names = ("created_from", "created_to")

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.days = {}
        for name in self.parameter_names:
            if name not in params:
                continue
            value = params.pop(name)[-1]
            self.used_parameters[name] = value
            if value:
                try:
                    self.days[name] = datetime.date.fromisoformat(value)
                except ValueError as exc:
                    raise IncorrectLookupParameters(
                        f"{name}={value!r} is not a date such as 2026-01-31."
                    ) from exc

    def has_output(self):
        return True

    def expected_parameters(self):
        return list(self.parameter_names)

    def queryset(self, request, queryset):
        created_after, created_before = day_bounds(
            self.days.get("created_from"), self.days.get("created_to")
        )
        if created_after:
            queryset = queryset.filter(created_at__gte=created_after)
        if created_before:
            queryset = queryset.filter(created_at__lt=created_before)
        return queryset

    def choices(self, changelist):
        hidden = [
            (name, value)
            for name, values in changelist.filter_params.items()
            if name not in self.parameter_names
            for value in values
        ]
        yield {
            "selected": bool(self.days),
            "created_from": self.used_parameters.get("created_from", ""),
            "created_to": self.used_parameters.get("created_to", ""),
            "hidden": hidden,
            "clear_url": changelist.get_query_string(remove=list(self.parameter_names)),
        }


class AttentionFilter(admin.SimpleListFilter):
    """Jobs an operator may need to act on."""

    title = "needs attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [
            ("stuck", f"Stuck (no change for {settings.SMI_STUCK_AFTER_MINUTES} min)"),
            ("failed_paid", "Failed and not refunded"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "stuck":
            return queryset.filter(
                status__in=[Status.PENDING, Status.PROCESSING],
                updated_at__lt=job_manager.stuck_since(),
            )
        if self.value() == "failed_paid":
            return queryset.filter(
                status=Status.FAILED, payment_status=PaymentStatus.PAID
            )
        return queryset


# Operator actions: forms, and what each one runs


class ReasonForm(forms.Form):
    reason = forms.CharField(
        required=False,
        max_length=500,
        help_text="Optional; kept on the job's timeline.",
    )


class RequiredReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, help_text="Kept on the job's timeline.")


class RefundForm(forms.Form):
    reason = forms.CharField(
        max_length=REFUND_REASON_MAX_LENGTH,
        help_text="Kept on the refund and the timeline.",
    )


class PartialRefundForm(RefundForm):
    amount = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        decimal_places=2,
        help_text="Leave empty to refund everything not yet refunded.",
    )


class ExtendForm(forms.Form):
    hours = forms.IntegerField(
        min_value=1,
        max_value=MAX_EXTEND_HOURS,
        initial=24,
        help_text="Added to the current expiry, or to now if the link has expired.",
    )


class EmptyForm(forms.Form):
    pass


def run_retry(job, data, actor):
    result = job_manager.retry(job.job_id, actor=actor, reason=data.get("reason", ""))
    return RETRY_RESULTS[result]


def run_refund(job, data, actor):
    refund = job_manager.refund(
        job.job_id, data.get("amount"), reason=data["reason"], actor=actor
    )
    return f"refund of {refund.amount} {refund.currency.upper()} is {refund.status}"


def run_resend(job, data, actor):
    job_manager.resend_download(job.job_id, actor=actor)
    return "download email sent with a new link"


def run_extend(job, data, actor):
    expires_at = job_manager.extend_expiry(job.job_id, data["hours"], actor=actor)
    return f"download link now expires {expires_at:%Y-%m-%d %H:%M} UTC"


def run_fail(job, data, actor):
    job_manager.mark_failed_by_operator(job.job_id, reason=data["reason"], actor=actor)
    return "marked failed"


@dataclass(frozen=True)
class OperatorAction:
    name: str
    label: str
    form_class: type
    run: object
    description: str
    # The form for several jobs at once, or None if the action is single-job only.
    bulk_form_class: object = None
    applies: object = field(default=lambda job: True)


def can_retry(job):
    return job.status == Status.FAILED or job_manager.is_stuck(job)


def can_refund(job):
    return job.payment_status in (PaymentStatus.PAID, PaymentStatus.PARTIALLY_REFUNDED)


def has_download(job):
    return (
        job.status == Status.COMPLETED and job.payment_status != PaymentStatus.REFUNDED
    )


def can_fail(job):
    return job.status in (Status.AWAITING_PAYMENT, Status.PENDING, Status.PROCESSING)


ACTIONS = {
    action.name: action
    for action in [
        OperatorAction(
            "retry",
            "Retry",
            ReasonForm,
            run_retry,
            "A failed job goes back to pending and is processed again; it must be "
            "paid, and its automatic refund must have failed. A stuck pending or "
            "processing job is processed again.",
            bulk_form_class=ReasonForm,
            applies=can_retry,
        ),
        OperatorAction(
            "refund",
            "Refund",
            PartialRefundForm,
            run_refund,
            "Refunds the payment through the payment provider. A full refund also "
            "makes the download link stop working.",
            bulk_form_class=RefundForm,
            applies=can_refund,
        ),
        OperatorAction(
            "resend",
            "Resend download email",
            EmptyForm,
            run_resend,
            "Emails the customer a new download link valid for the full download "
            "expiry; the previous link stops working.",
            bulk_form_class=EmptyForm,
            applies=has_download,
        ),
        OperatorAction(
            "reissue",
            "Issue new download link",
            EmptyForm,
            None,
            "Issues a new download link without emailing it, and shows it to you "
            "once. The previous link stops working.",
            applies=has_download,
        ),
        OperatorAction(
            "extend",
            "Extend download expiry",
            ExtendForm,
            run_extend,
            "Makes the current download link work longer.",
            bulk_form_class=ExtendForm,
            applies=has_download,
        ),
        OperatorAction(
            "fail",
            "Mark failed",
            RequiredReasonForm,
            run_fail,
            "Fails the job. A paid job is then refunded automatically.",
            bulk_form_class=RequiredReasonForm,
            applies=can_fail,
        ),
    ]
}


def run_action_on_jobs(request, action, jobs, data):
    """Run `action` on each job; return (messages of successes, of failures)."""
    actor = admin_actor(request)
    done, failed = [], []
    for job in jobs:
        try:
            outcome = action.run(job, data, actor)
        except (JobError, PaymentError) as exc:
            failed.append(f"{job.job_id}: {exc}")
            logger.warning(
                "event=admin_action_failed action=%s job_id=%s actor=%s error=%s",
                action.name,
                job.job_id,
                actor,
                exc,
            )
        else:
            done.append(f"{job.job_id}: {outcome}")
    return done, failed


def report(request, action, done, failed):
    if len(done) == 1:
        messages.success(request, f"{action.label}: {done[0]}.")
    elif done:
        messages.success(request, f"{action.label}: done for {len(done)} jobs.")
    for message in failed[:MAX_ERROR_MESSAGES]:
        messages.error(request, message)
    if len(failed) > MAX_ERROR_MESSAGES:
        messages.error(
            request,
            f"{len(failed) - MAX_ERROR_MESSAGES} more jobs failed in the same way.",
        )


def make_bulk_action(action):
    """Return an admin action that confirms `action`, then runs it on each job."""

    def bulk_action(model_admin, request, queryset):
        jobs = list(queryset)
        form = action.bulk_form_class(
            request.POST if request.POST.get("post") else None
        )
        if form.is_bound and form.is_valid():
            done, failed = run_action_on_jobs(request, action, jobs, form.cleaned_data)
            report(request, action, done, failed)
            return None
        return model_admin.render_confirmation(request, action, jobs, form, bulk=True)

    bulk_action.__name__ = f"bulk_{action.name}"
    return admin.action(
        description=f"{action.label} selected jobs…", permissions=["change"]
    )(bulk_action)


# The model admin


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "job_id",
        "status",
        "payment_status",
        "resolution",
        "price",
        "cost",
        "margin",
        "provider",
        "email",
        "created_at",
    )
    list_filter = (
        "status",
        "payment_status",
        "provider",
        "resolution",
        AttentionFilter,
        "created_at",
        CreatedDateRangeFilter,
    )
    search_fields = SEARCH_FIELDS
    search_help_text = (
        "Job id, email, checkout session id, payment intent id or provider job id."
    )
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = [make_bulk_action(a) for a in ACTIONS.values() if a.bulk_form_class]
    fieldsets = (
        (
            "Job",
            {
                "fields": (
                    "job_id",
                    "status",
                    "payment_status",
                    "resolution",
                    "email",
                    "source_kind",
                    "source_ref",
                    "source_path",
                    ("source_width", "source_height", "source_format"),
                    ("post_id", "attachment_id"),
                    ("created_at", "updated_at"),
                    "attempt_count",
                )
            },
        ),
        (
            "Payment",
            {
                "fields": (
                    "payment_provider",
                    "checkout_session_id",
                    "payment_intent_id",
                    "paid_at",
                    "refund_amount",
                    "refunded_at",
                )
            },
        ),
        (
            "Money",
            {
                "fields": (
                    "currency",
                    "price",
                    "provider_cost",
                    "payment_fee",
                    "cost",
                    "margin",
                    ("credits_required", "credits_charged"),
                    "markup_percentage",
                )
            },
        ),
        (
            "Upscaling",
            {
                "fields": (
                    "provider",
                    "provider_job_id",
                    "processing_started_at",
                    "completed_at",
                    "output_path",
                    ("output_width", "output_height", "output_format"),
                    "output_size",
                    "output_sha256",
                )
            },
        ),
        (
            "Download",
            {
                "fields": (
                    "download_link",
                    "download_expires_at",
                    "download_count",
                    "last_downloaded_at",
                )
            },
        ),
        (
            "Failure",
            {"fields": ("failure_code", "failure_detail", "failed_at", "abandoned_at")},
        ),
    )

    def get_readonly_fields(self, request, obj=None):
        # Every change to a job goes through the JobManager, so the admin
        # page shows the record without letting it be edited directly.
        return [f.name for f in Job._meta.fields] + [
            "price",
            "cost",
            "margin",
            "download_link",
        ]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return annotate_money(super().get_queryset(request))

    @admin.display(description="price", ordering="customer_price")
    def price(self, job):
        if job.customer_price is None:
            return "-"
        return f"{job.customer_price} {job.currency.upper()}"

    @admin.display(description="cost", ordering="total_cost")
    def cost(self, job):
        """Provider cost plus the payment provider's fee."""
        return format_money(getattr(job, "total_cost", None))

    @admin.display(description="margin", ordering="margin_amount")
    def margin(self, job):
        """Price less refunds and cost, for jobs that were paid."""
        return format_money(getattr(job, "margin_amount", None))

    @admin.display(description="download link")
    def download_link(self, job):
        if job.download_token_hash is None:
            return "none issued" if job.status == Status.COMPLETED else "-"
        if job.download_expires_at and job.download_expires_at <= timezone.now():
            return "expired"
        return "active"

    # The job page: read-only fields, the timeline and the action buttons

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST":
            # A saved form would write the row without the JobManager.
            return HttpResponseNotAllowed(["GET", "HEAD"])
        return super().changeform_view(request, object_id, form_url, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        extra_context.update(
            show_save=False,
            show_save_and_continue=False,
            show_save_and_add_another=False,
            show_delete=False,
        )
        if job is not None:
            extra_context.update(self.job_page_context(request, job))
        return super().change_view(request, object_id, form_url, extra_context)

    def job_page_context(self, request, job):
        can_act = self.has_change_permission(request, job)
        buttons = [
            {
                "label": action.label,
                "url": reverse("admin:jobs_job_action", args=[job.pk, action.name]),
            }
            for action in ACTIONS.values()
            if can_act and action.applies(job)
        ]
        return {
            "job_actions": buttons,
            "timeline": job.events.all(),
            "refunds": job.refunds.all(),
            "notifications": job.notifications.all(),
        }

    def get_urls(self):
        urls = [
            path(
                "<path:object_id>/actions/<str:action_name>/",
                self.admin_site.admin_view(self.action_view),
                name="jobs_job_action",
            )
        ]
        return urls + super().get_urls()

    def action_view(self, request, object_id, action_name):
        """Confirm one action on one job, and run it when confirmed."""
        action = ACTIONS.get(action_name)
        job = self.get_object(request, object_id)
        if action is None or job is None:
            raise Http404("No such job or action.")
        if not self.has_change_permission(request, job):
            raise PermissionDenied
        form = action.form_class(request.POST if request.method == "POST" else None)
        if not (form.is_bound and form.is_valid()):
            return self.render_confirmation(request, action, [job], form, bulk=False)
        change_url = reverse("admin:jobs_job_change", args=[job.pk])
        if action.name == "reissue":
            return self.reissue(request, job, change_url)
        done, failed = run_action_on_jobs(request, action, [job], form.cleaned_data)
        report(request, action, done, failed)
        return HttpResponseRedirect(change_url)

    def reissue(self, request, job, change_url):
        # The link is shown in this response only: it is not put in a
        # message, which would store it in the session.
        try:
            token = job_manager.reissue_token(job.job_id, actor=admin_actor(request))
        except JobError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(change_url)
        job.refresh_from_db()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "job": job,
            "title": "New download link",
            "download_url": settings.PUBLIC_BASE_URL
            + reverse("delivery:download", args=[token]),
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/jobs/job/new_link.html", context)

    def render_confirmation(self, request, action, jobs, form, *, bulk):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{action.label}: are you sure?",
            "action": action,
            "jobs": jobs,
            "form": form,
            "bulk": bulk,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "inapplicable": [job for job in jobs if not action.applies(job)],
        }
        return TemplateResponse(
            request, "admin/jobs/job/action_confirmation.html", context
        )
