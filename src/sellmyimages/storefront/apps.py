from django.apps import AppConfig


class StorefrontConfig(AppConfig):
    name = "sellmyimages.storefront"
    label = "storefront"
    verbose_name = "Storefront"
