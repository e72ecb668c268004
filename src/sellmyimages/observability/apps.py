from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "sellmyimages.observability"
    label = "observability"
    verbose_name = "Observability"

    def ready(self):
        # Importing the module connects its signal receivers.
        from sellmyimages.observability import receivers  # noqa: F401
