"""The realtime presence in the Django admin: read-only lists, two actions and a
monitoring page.

Presence rows are never edited by hand: no model here can be added, changed or
deleted through the admin. Counts are annotated in the changelist query, not
fetched per row. The actions need a permission beyond viewing:

- "Disconnect the selected connections": ``skapi_channels.delete_connection``;
- "Send a notice to the selected groups": ``skapi_channels.change_realtimegroup``.

A group's page shows the messages its stream keeps (docs/protocol.md section 11),
read-only, to staff who may view groups.

The monitoring page is at ``<admin>/skapi_channels/serverprocess/monitoring/``
(linked from each changelist) for staff who may view server processes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from skapi_channels import api, charts, monitoring
from skapi_channels.conf import conf
from skapi_channels.models import Connection, RealtimeGroup, ServerProcess
from skapi_channels.protocol import dumps

CHANGE_LIST_TEMPLATE = "admin/skapi_channels/change_list.html"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Presence rows are written by the realtime server only."""

    change_list_template = CHANGE_LIST_TEMPLATE
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def dead_before() -> Any:
    return timezone.now() - timedelta(seconds=conf.DEAD_AFTER)


# Groups.


class NoticeForm(forms.Form):
    sentence = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=_("Sent as #notice with #code SERVER_NOTICE to every connection in the group."),
    )


@admin.register(RealtimeGroup)
class RealtimeGroupAdmin(ReadOnlyAdmin):
    list_display = ("name", "number_of_users", "connections", "created_at")
    search_fields = ("name",)
    ordering = ("-number_of_users", "name")
    actions = ("send_notice",)
    readonly_fields = ("kept_messages",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[RealtimeGroup]:
        return super().get_queryset(request).annotate(open=monitoring.connections_in_group())

    @admin.display(description=_("connections"), ordering="open")
    def connections(self, group: RealtimeGroup) -> str:
        url = reverse(f"{self.admin_site.name}:skapi_channels_connection_changelist")
        return format_html(
            '<a href="{}?{}">{}</a>', url, urlencode({"group": group.name}), group.open
        )

    @admin.display(description=_("kept messages"))
    def kept_messages(self, group: RealtimeGroup) -> str:
        """The group's kept history, oldest first (what a join with ``last`` replays)."""
        if conf.HISTORY_SIZE <= 0 or conf.HISTORY_TTL <= 0:
            return _("History is off (HISTORY_SIZE or HISTORY_TTL is 0).")
        kept = api.history(group.name, last=conf.HISTORY_SIZE)
        if not kept.epoch:
            return _("This channel layer keeps no history.")
        if not kept.messages:
            return _("No message kept.")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            (
                (m["#offset"], m["#user_id"] or "(server)", _shorten(dumps(m["#message"])))
                for m in kept.messages
            ),
        )
        return format_html(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            _("offset"),
            _("user_id"),
            _("content"),
            rows,
        )

    def has_notice_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("skapi_channels.change_realtimegroup")

    @admin.action(description=_("Send a notice to the selected groups"), permissions=("notice",))
    def send_notice(
        self, request: HttpRequest, queryset: QuerySet[RealtimeGroup]
    ) -> HttpResponse | None:
        names = list(queryset.values_list("name", flat=True))
        form = NoticeForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            sentence = form.cleaned_data["sentence"]
            async_to_sync(send_notices)(names, sentence)
            self.message_user(
                request,
                ngettext(
                    "Sent the notice to %(count)d group.",
                    "Sent the notice to %(count)d groups.",
                    len(names),
                )
                % {"count": len(names)},
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Send a notice"),
            "opts": self.model._meta,
            "form": form,
            "groups": names,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/skapi_channels/send_notice.html", context)


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def send_notices(groups: list[str], sentence: str) -> None:
    for group in groups:
        await api.asend_notice(group, sentence)


# Connections.


class GroupFilter(admin.SimpleListFilter):
    """The largest groups (not every distinct name: there may be thousands)."""

    title = _("group")
    parameter_name = "group"
    NONE = "-"
    SHOWN = 20

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = list(
            RealtimeGroup.objects.order_by("-number_of_users", "name").values_list(
                "name", flat=True
            )[: self.SHOWN]
        )
        value = self.value()
        if value and value != self.NONE and value not in names:
            names.append(value)
        return [(self.NONE, _("(no group)"))] + [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if value == self.NONE:
            return queryset.filter(group_name__isnull=True)
        return queryset.filter(group_name=value)


@admin.register(Connection)
class ConnectionAdmin(ReadOnlyAdmin):
    list_display = ("cid", "user", "group_name", "server", "connected_at", "last_seen")
    list_filter = (GroupFilter, "server")
    list_select_related = ("server",)
    search_fields = ("=user_id",)
    search_help_text = _("Search by user_id, or by (part of) a username.")
    ordering = ("-connected_at", "cid")
    actions = ("disconnect",)

    @admin.display(description=_("user"), ordering="user_id")
    def user(self, connection: Connection) -> str:
        return connection.user_id

    @admin.display(description=_("last seen"), ordering="server__heartbeat_at")
    def last_seen(self, connection: Connection) -> Any:
        """A connection lives while its server process heartbeats."""
        return connection.server.heartbeat_at

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Connection], search_term: str
    ) -> tuple[QuerySet[Connection], bool]:
        result, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            user_ids = usernames_to_user_ids(term)
            if user_ids:
                result = result | queryset.filter(user_id__in=user_ids)
        return result, may_have_duplicates

    def has_disconnect_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("skapi_channels.delete_connection")

    @admin.action(description=_("Disconnect the selected connections"), permissions=("disconnect",))
    def disconnect(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        rows = list(queryset.values_list("channel_name", "server__heartbeat_at"))
        async_to_sync(close_channels)([channel for channel, _heartbeat in rows])
        cutoff = dead_before()
        stale = sum(1 for _channel, heartbeat in rows if heartbeat < cutoff)
        self.message_user(
            request,
            ngettext(
                "Asked %(count)d connection to close; its group is told USER_DISCONNECTED.",
                "Asked %(count)d connections to close; their groups are told USER_DISCONNECTED.",
                len(rows),
            )
            % {"count": len(rows)},
            messages.SUCCESS,
        )
        if stale:
            self.message_user(
                request,
                _(
                    "%(stale)d of them belong to server processes that stopped heartbeating; "
                    "the reaper (or manage.py realtime_prune) removes those."
                )
                % {"stale": stale},
                messages.WARNING,
            )


async def close_channels(channel_names: list[str]) -> None:
    for channel_name in channel_names:
        await api.close_channel(channel_name)


def usernames_to_user_ids(term: str, limit: int = 100) -> list[str]:
    """The user_ids of users whose username contains ``term``."""
    from django.contrib.auth import get_user_model

    model = get_user_model()
    lookup = {f"{model.USERNAME_FIELD}__icontains": term}
    return [conf.USER_ID_FUNCTION(user) for user in model._default_manager.filter(**lookup)[:limit]]


# Server processes and the monitoring page.


class AliveFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("alive", _("alive")), ("stale", _("stale"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "alive":
            return queryset.filter(heartbeat_at__gte=dead_before())
        if self.value() == "stale":
            return queryset.filter(heartbeat_at__lt=dead_before())
        return queryset


@admin.register(ServerProcess)
class ServerProcessAdmin(ReadOnlyAdmin):
    list_display = ("id", "host", "pid", "started_at", "heartbeat_at", "alive", "connections")
    list_filter = (AliveFilter,)
    search_fields = ("host", "=id")
    ordering = ("host", "pid")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServerProcess]:
        return super().get_queryset(request).annotate(open=Count("connections"))

    @admin.display(description=_("alive"), boolean=True, ordering="heartbeat_at")
    def alive(self, process: ServerProcess) -> bool:
        return process.heartbeat_at >= dead_before()

    @admin.display(description=_("connections"), ordering="open")
    def connections(self, process: ServerProcess) -> str:
        url = reverse(f"{self.admin_site.name}:skapi_channels_connection_changelist")
        query = urlencode({"server__id__exact": process.id})
        return format_html('<a href="{}?{}">{}</a>', url, query, process.open)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.monitoring_view)
        return [path("monitoring/", view, name="skapi_channels_monitoring"), *super().get_urls()]

    def monitoring_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        snapshot = monitoring.snapshot()
        fragment = request.GET.get("fragment") == "1"
        context = {
            **({} if fragment else self.admin_site.each_context(request)),
            "title": _("Realtime monitoring"),
            "opts": self.model._meta,
            "snapshot": snapshot,
            "charts": monitoring_charts(snapshot),
            "refresh_seconds": max(2, round(conf.HEARTBEAT_INTERVAL)),
        }
        template = "monitoring_fragment.html" if fragment else "monitoring.html"
        return TemplateResponse(request, f"admin/skapi_channels/{template}", context)


def monitoring_charts(snapshot: monitoring.Snapshot) -> list[Any]:
    processes = snapshot.live_processes
    end = snapshot.taken_at.timestamp()
    # The last WINDOW_SECONDS, or less while the data is younger (at least a minute).
    oldest = min((p.points[0].at for p in processes if p.points), default=end)
    start = min(end - 60, max(end - monitoring.WINDOW_SECONDS, oldest))
    connections = [
        charts.Line(p.label, [(point.at, point.connections) for point in p.points])
        for p in processes
    ]
    rates = [
        charts.Line(
            p.label,
            [
                (point.at, point.messages_per_second)
                for point in p.points
                if point.messages_per_second is not None
            ],
        )
        for p in processes
    ]
    return [
        charts.line_chart(_("Open connections per server process"), connections, start, end),
        charts.line_chart(_("Messages per second per server process"), rates, start, end),
    ]
