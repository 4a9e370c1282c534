from django.urls import path

from . import views

urlpatterns = [
    path("cpu", views.cpu),
    path("io", views.io),
    path("stream", views.stream),
    path("async", views.async_view),
    path("items/<int:item_id>", views.item),
]
