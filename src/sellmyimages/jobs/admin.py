from django.contrib import admin

from sellmyimages.jobs.models import Job, JobEvent


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "event", "from_status", "to_status", "actor", "reason")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "job_id",
        "status",
        "payment_status",
        "resolution",
        "customer_price",
        "provider",
        "created_at",
    )
    list_filter = ("status", "payment_status", "provider", "resolution", "created_at")
    search_fields = (
        "job_id",
        "email",
        "checkout_session_id",
        "payment_intent_id",
        "provider_job_id",
    )
    date_hierarchy = "created_at"
    inlines = [JobEventInline]

    def get_readonly_fields(self, request, obj=None):
        # Every change to a job goes through the JobManager, so the admin
        # page shows the record without letting it be edited directly.
        return [field.name for field in Job._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
