from django.contrib import admin
from django.urls import include, path

from sellmyimages import health
from sellmyimages.api.views import api
from sellmyimages.payments import stripe_views
from sellmyimages.observability.views import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("checkout/", include("sellmyimages.payments.urls")),
    path("downloads/", include("sellmyimages.delivery.urls")),
    path("webhooks/stripe", stripe_views.stripe_webhook, name="stripe-webhook"),
    path("webhooks/", include("sellmyimages.upscaling.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("sellmyimages.storefront.urls")),
]
