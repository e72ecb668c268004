from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "sellmyimages.analytics"
    label = "analytics"
    verbose_name = "Analytics"
