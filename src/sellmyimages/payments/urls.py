from django.urls import path

from sellmyimages.payments import views

app_name = "payments"

urlpatterns = [
    path("local/<str:session_id>/", views.local_checkout, name="local-checkout"),
]
