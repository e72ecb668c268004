"""Admin pages for refunds, Stripe events and disputes, and the test-mode header."""

from django.conf import settings
from django.contrib import admin, messages
from django.utils.functional import lazy

from sellmyimages.jobs.exceptions import JobValidationError
from sellmyimages.payments.backends import payments_in_test_mode
from sellmyimages.payments.models import Dispute, Refund, StripeEvent
from sellmyimages.payments.service import retry_refund
from sellmyimages.payments.stripe_webhooks import reprocess_event


def site_header():
    header = f"{settings.SMI_SHOP_NAME} administration"
    if payments_in_test_mode():
        return f"{header} (TEST MODE: no real money moves)"
    return header


# Lazy, so that the header follows the settings of each request.
admin.site.site_header = lazy(site_header, str)()


def actor_for(request):
    return f"admin:{request.user.get_username()}"


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "job",
        "kind",
        "amount",
        "currency",
        "status",
        "attempts",
        "provider_refund_id",
        "created_at",
    )
    list_filter = ("status", "kind", "created_at")
    search_fields = ("id", "job__job_id", "provider_refund_id")
    readonly_fields = [field.name for field in Refund._meta.fields]
    actions = ["send_again"]

    @admin.action(description="Send the selected failed refunds again")
    def send_again(self, request, queryset):
        for refund in queryset:
            try:
                retry_refund(refund.pk, actor=actor_for(request))
            except JobValidationError as exc:
                self.message_user(request, f"Refund {refund.id}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"Refund {refund.id} will be sent again.")


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = (
        "event_id",
        "event_type",
        "outcome",
        "job",
        "created",
        "received_at",
        "attempts",
        "livemode",
    )
    list_filter = ("outcome", "event_type", "livemode", "received_at")
    search_fields = ("event_id", "job__job_id")
    readonly_fields = [field.name for field in StripeEvent._meta.fields]
    date_hierarchy = "received_at"
    actions = ["reprocess"]

    @admin.action(description="Process the selected events again")
    def reprocess(self, request, queryset):
        for row in queryset:
            row = reprocess_event(row.pk, actor=actor_for(request))
            level = messages.ERROR if row.outcome == "failed" else messages.INFO
            self.message_user(
                request, f"{row.event_id}: {row.outcome}, {row.detail}", level
            )


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdmin):
    list_display = (
        "dispute_id",
        "job",
        "amount",
        "currency",
        "reason",
        "status",
        "created_at",
    )
    list_filter = ("status", "reason", "created_at")
    search_fields = ("dispute_id", "job__job_id")
    readonly_fields = [field.name for field in Dispute._meta.fields]
