"""Read-only admin pages for provider submissions and circuit breakers."""

from django.contrib import admin

from sellmyimages.upscaling.models import CircuitState, ProviderSubmission


class ReadOnlyAdmin(admin.ModelAdmin):
    """The workers own these rows; the admin only shows them."""

    # Fields never shown, such as hashes of secrets.
    hidden_fields = ()

    def get_fields(self, request, obj=None):
        return self.get_readonly_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return [
            field.name
            for field in self.model._meta.fields
            if field.name not in self.hidden_fields
        ]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ProviderSubmission)
class ProviderSubmissionAdmin(ReadOnlyAdmin):
    list_display = (
        "job",
        "provider",
        "attempt",
        "state",
        "provider_status",
        "credits_quoted",
        "credits_charged",
        "error_code",
        "created_at",
    )
    list_filter = ("provider", "state", "error_code")
    search_fields = ("job__job_id", "provider_job_id")
    hidden_fields = ("webhook_secret_hash", "source_url_hash")


@admin.register(CircuitState)
class CircuitStateAdmin(ReadOnlyAdmin):
    list_display = (
        "provider",
        "consecutive_failures",
        "retry_at",
        "opened_at",
        "last_failure_code",
        "updated_at",
    )
