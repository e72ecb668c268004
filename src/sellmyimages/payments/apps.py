from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "sellmyimages.payments"
    label = "payments"
    verbose_name = "Payments"
