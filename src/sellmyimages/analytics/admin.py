"""The analytics page of the admin site: tables and a chart of the sales report."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from sellmyimages.analytics.models import SalesReport
from sellmyimages.analytics.report import MAX_DAYS, build_report, format_duration

DEFAULT_DAYS = 30
DAY_CHOICES = (7, 30, 90, 365)


def requested_days(request):
    """Return the ?days= value, or the default when it is missing or invalid."""
    try:
        days = int(request.GET.get("days", DEFAULT_DAYS))
    except ValueError:
        return DEFAULT_DAYS
    return days if 1 <= days <= MAX_DAYS else DEFAULT_DAYS


@admin.register(SalesReport)
class SalesReportAdmin(admin.ModelAdmin):
    """Shows the report in place of a list of rows; nothing can be edited."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        # Only the report itself: the change pages of the proxied jobs
        # belong to the jobs admin.
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view(self.changelist_view)
        return [path("", view, name="%s_%s_changelist" % info)]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        # Imported here so that matplotlib loads on the first visit to this
        # page, not with the admin in every process.
        from sellmyimages.analytics.charts import png_data_url, render_report_chart

        days = requested_days(request)
        report = build_report(days)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Sales report, last {days} days",
            "opts": self.model._meta,
            "report": report,
            "delivery_average": format_duration(report.delivery_average_seconds),
            "delivery_p95": format_duration(report.delivery_p95_seconds),
            "days": days,
            "day_choices": DAY_CHOICES,
            "chart_url": png_data_url(render_report_chart(report)),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/analytics/report.html", context)
