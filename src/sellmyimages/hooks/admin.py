import json

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from sellmyimages.hooks import sending
from sellmyimages.hooks.models import (
    DeliveryAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from sellmyimages.hooks.signing import generate_secret

RECENT_DELIVERIES = 20


class WebhookEndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "description", "events", "active")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("__str__", "description", "event_list", "active", "created_at")
    list_filter = ("active",)
    readonly_fields = ("secret", "created_at", "updated_at", "recent_deliveries")
    # The secret is generated when the endpoint is first saved, so the add
    # page has none to show yet.
    add_fieldsets = ((None, {"fields": ("url", "description", "events", "active")}),)
    actions = ["rotate_secret"]

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.add_fieldsets
        return super().get_fieldsets(request, obj)

    @admin.display(description="events")
    def event_list(self, endpoint):
        return ", ".join(endpoint.events or [])

    @admin.display(description="recent deliveries")
    def recent_deliveries(self, endpoint):
        if endpoint.pk is None:
            return "-"
        deliveries = endpoint.deliveries.all()[:RECENT_DELIVERIES]
        rows = format_html_join(
            "",
            "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:hooks_webhookdelivery_change", args=[d.pk]),
                    d.msg_id,
                    d.event,
                    d.status,
                    d.attempts,
                    d.response_status_code or "-",
                    d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                )
                for d in deliveries
            ),
        )
        all_url = (
            reverse("admin:hooks_webhookdelivery_changelist")
            + f"?endpoint__id__exact={endpoint.pk}"
        )
        return format_html(
            "<table><tr><th>message id</th><th>event</th><th>status</th><th>attempts</th>"
            "<th>response</th><th>created</th></tr>{}</table><p><a href='{}'>All deliveries</a></p>",
            rows,
            all_url,
        )

    @admin.action(description="Generate a new signing secret")
    def rotate_secret(self, request, queryset):
        for endpoint in queryset:
            endpoint.secret = generate_secret()
            endpoint.save(update_fields=["secret", "updated_at"])
        self.message_user(
            request,
            f"New secrets generated for {queryset.count()} endpoint(s); "
            "give each receiver its new secret.",
            messages.WARNING,
        )


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = (
        "number",
        "started_at",
        "duration_ms",
        "outcome",
        "status_code",
        "response_body",
        "error",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "msg_id",
        "endpoint",
        "event",
        "job_id",
        "status",
        "attempts",
        "response_status_code",
        "created_at",
        "delivered_at",
    )
    list_filter = ("status", "event", "endpoint")
    search_fields = ("msg_id", "job_id")
    date_hierarchy = "created_at"
    inlines = [DeliveryAttemptInline]
    actions = ["resend_deliveries"]

    def get_readonly_fields(self, request, obj=None):
        return [
            field.name
            for field in WebhookDelivery._meta.fields
            if field.name != "payload"
        ] + ["formatted_payload"]

    def get_fields(self, request, obj=None):
        return [
            name for name in self.get_readonly_fields(request, obj) if name != "payload"
        ]

    @admin.display(description="payload")
    def formatted_payload(self, delivery):
        try:
            text = json.dumps(json.loads(delivery.payload), indent=2, sort_keys=True)
        except ValueError:
            text = delivery.payload
        return format_html("<pre>{}</pre>", text)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # The change page is read-only; resending is an action.
        return False

    def has_resend_permission(self, request):
        return request.user.has_perm("hooks.change_webhookdelivery")

    @admin.action(description="Resend selected deliveries", permissions=["resend"])
    def resend_deliveries(self, request, queryset):
        actor = f"admin:{request.user.get_username()}"
        sent = sum(1 for delivery in queryset if sending.resend(delivery, actor=actor))
        skipped = queryset.count() - sent
        message = f"{sent} deliveries queued to be sent again."
        if skipped:
            message += (
                f" {skipped} skipped because an attempt is already queued or running."
            )
        self.message_user(
            request, message, messages.SUCCESS if sent else messages.WARNING
        )
