from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "sellmyimages.notifications"
    label = "notifications"
    verbose_name = "Notifications"
