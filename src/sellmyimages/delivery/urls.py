from django.urls import path

from sellmyimages.delivery import views

app_name = "delivery"

urlpatterns = [
    path("<str:token>", views.download, name="download"),
]
