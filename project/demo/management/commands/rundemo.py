"""``manage.py rundemo``: migrate, make the demo users, print them, serve."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

DEMO_USERS = ("alice", "bob", "carol")
DEMO_PASSWORD = "demo-pass-1234"


class Command(BaseCommand):
    help = "Migrate, create the demo users alice, bob and carol, then run the server."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport", nargs="?", default="127.0.0.1:8000", help="Address and port to serve on."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # runserver's autoreloader runs this command again in a child process
        # (with RUN_MAIN set): prepare and print only once, in the parent.
        if os.environ.get(DJANGO_AUTORELOAD_ENV) != "true":
            self.prepare()
        call_command("runserver", options["addrport"])

    def prepare(self) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        model = get_user_model()
        for name in DEMO_USERS:
            if not model._default_manager.filter(username=name).exists():
                model._default_manager.create_user(username=name, password=DEMO_PASSWORD)
        self.stdout.write(self.style.SUCCESS("Demo users (log in at /login/):"))
        for name in DEMO_USERS:
            self.stdout.write(f"  {name} / {DEMO_PASSWORD}")
        self.stdout.write("Open the chat in two windows (one private window) as two users.")
