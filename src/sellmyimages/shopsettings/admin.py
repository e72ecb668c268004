"""The shop settings page: one form of runtime overrides, and its change history."""

from django.conf import settings
from django.contrib import admin
from django.http import HttpResponseRedirect
from django.urls import reverse

from sellmyimages.shopsettings.config import (
    ENVIRONMENT_SETTINGS,
    environment_defaults,
    save_settings,
)
from sellmyimages.shopsettings.models import (
    SINGLETON_PK,
    ShopSettings,
    ShopSettingsChange,
)

RECENT_CHANGES = 20


@admin.register(ShopSettings)
class ShopSettingsAdmin(admin.ModelAdmin):
    fields = tuple(ENVIRONMENT_SETTINGS)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        # There is one row, so the list goes straight to its form.
        ShopSettings.objects.get_or_create(pk=SINGLETON_PK)
        url = reverse("admin:shopsettings_shopsettings_change", args=[SINGLETON_PK])
        return HttpResponseRedirect(url)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        defaults = environment_defaults()
        for name, setting in ENVIRONMENT_SETTINGS.items():
            default = defaults[name]
            if name == "resolutions":
                default = ", ".join(default)
            field = form.base_fields[name]
            field.help_text = (
                f"{field.help_text} Leave empty to use the environment's value: "
                f"{default} ({setting})."
            )
        return form

    def save_model(self, request, obj, form, change):
        save_settings(obj, actor=f"admin:{request.user.get_username()}")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        ShopSettings.objects.get_or_create(pk=SINGLETON_PK)
        extra_context = dict(extra_context or {})
        extra_context["recent_changes"] = ShopSettingsChange.objects.all()[
            :RECENT_CHANGES
        ]
        extra_context["show_save_and_add_another"] = False
        extra_context["cache_seconds"] = settings.SMI_SHOP_SETTINGS_CACHE_SECONDS
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(ShopSettingsChange)
class ShopSettingsChangeAdmin(admin.ModelAdmin):
    list_display = ("changed_at", "actor", "field", "old_value", "new_value")
    list_filter = ("field", "actor")
    date_hierarchy = "changed_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
