from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "sellmyimages.catalog"
    label = "catalog"
    verbose_name = "Catalog"
