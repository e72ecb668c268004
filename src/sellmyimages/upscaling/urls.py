"""Inbound provider traffic, included under /webhooks/.

Every secret or signed token is the segment right after /webhooks/<name>/,
where logredact's pattern replaces it in log lines.
"""

from django.urls import path

from sellmyimages.upscaling import signed_source, webhooks

app_name = "upscaling"

urlpatterns = [
    path(
        "upsampler/<str:secret>",
        webhooks.provider_callback,
        {"provider": "upsampler"},
        name="upsampler-webhook",
    ),
    path(
        "replicate/<str:secret>",
        webhooks.provider_callback,
        {"provider": "replicate"},
        name="replicate-webhook",
    ),
    path(
        "source/<str:token>/<str:filename>", signed_source.serve_source, name="source"
    ),
]
