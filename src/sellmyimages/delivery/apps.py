from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "sellmyimages.delivery"
    label = "delivery"
    verbose_name = "Delivery"
