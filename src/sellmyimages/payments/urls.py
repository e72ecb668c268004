from django.urls import path

from sellmyimages.payments import stripe_views, views

app_name = "payments"

urlpatterns = [
    path("local/<str:session_id>/", views.local_checkout, name="local-checkout"),
    path("stripe/success", stripe_views.stripe_success, name="stripe-success"),
    path(
        "stripe/cancel/<uuid:job_id>", stripe_views.stripe_cancel, name="stripe-cancel"
    ),
    path(
        "stripe/resume/<uuid:job_id>", stripe_views.stripe_resume, name="stripe-resume"
    ),
]
