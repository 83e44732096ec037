"""The numbers behind the monitoring page, and its charts."""

from __future__ import annotations

import pytest

from skapi_channels import charts, monitoring
from skapi_channels.runtime import ServerRuntime


def test_series_is_read_leniently():
    stats = {"series": [[10, 1, 5], "junk", [5, 1, 0], [1, 2], [20, 2, 7.0]]}
    assert monitoring.read_series(stats) == [(5.0, 1, 0), (10.0, 1, 5), (20.0, 2, 7)]
    assert monitoring.read_series({}) == []
    assert monitoring.read_series(None) == []


def test_points_carry_the_rate_since_the_previous_heartbeat():
    points = monitoring.to_points([(0, 1, 0), (5, 2, 10), (10, 2, 10), (15, 3, 40)], since=5)
    assert points == [
        monitoring.Point(5, 2, 2.0),
        monitoring.Point(10, 2, 0.0),
        monitoring.Point(15, 3, 6.0),
    ]


def test_recent_rate_spans_the_last_minute():
    series = [(t, 1, t * 2) for t in range(0, 121, 5)]  # two messages a second
    assert monitoring.recent_rate(series) == pytest.approx(2.0)
    assert monitoring.recent_rate(series[:1]) == 0
    assert monitoring.recent_rate([(0, 1, 10), (5, 1, 3)]) == 0  # never negative


def test_runtime_publishes_its_series_with_the_heartbeat():
    process = ServerRuntime()
    process.counters["group_messages"] += 3
    process.sample()
    process.counters["private_messages"] += 2
    process.counters["server_messages"] += 1
    process.sample()
    series = monitoring.read_series(process.stats())
    assert [(connections, messages) for _, connections, messages in series] == [(0, 3), (0, 6)]


def test_nice_ceiling():
    assert [charts.nice_ceiling(v) for v in (0, 0.3, 1, 3, 7, 12, 260)] == [
        1, 0.5, 1, 5, 10, 20, 500,
    ]  # fmt: skip


def test_chart_escapes_labels_and_draws_lines():
    svg = charts.line_chart(
        "Title <x>",
        [charts.Line("<b>web</b>", [(0, 1), (30, 2)]), charts.Line("one", [(60, 1)])],
        0,
        60,
    )
    assert "Title &lt;x&gt;" in svg and "&lt;b&gt;web" in svg and "<b>" not in svg
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1
    assert "No heartbeat data yet" in charts.line_chart("t", [], 0, 60)
