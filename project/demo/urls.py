from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from project.demo import views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("names/", views.names, name="names"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="demo/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
