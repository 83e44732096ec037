from django.urls import path

from skapi_channels import views

app_name = "skapi_channels"

urlpatterns = [
    path("groups/", views.groups, name="groups"),
    path("users/", views.users, name="users"),
    path("token/", views.token, name="token"),
]
