from django.apps import AppConfig


class UpscalingConfig(AppConfig):
    name = "sellmyimages.upscaling"
    label = "upscaling"
    verbose_name = "Upscaling"
