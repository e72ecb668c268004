from django.apps import AppConfig


class ShopSettingsConfig(AppConfig):
    name = "sellmyimages.shopsettings"
    label = "shopsettings"
    verbose_name = "Shop settings"
