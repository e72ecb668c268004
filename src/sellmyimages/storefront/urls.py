from django.urls import path

from sellmyimages.storefront import views

app_name = "storefront"

urlpatterns = [
    path("", views.catalog, name="catalog"),
    path("images/<str:name>/", views.product, name="product"),
    path("images/<str:name>/thumbnail.jpg", views.thumbnail, name="thumbnail"),
    path("orders/<uuid:job_id>/", views.order, name="order"),
    path("orders/<uuid:job_id>/download", views.order_download, name="order-download"),
    path("orders/<uuid:job_id>/new-link", views.order_new_link, name="order-new-link"),
]
