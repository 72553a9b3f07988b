"""The chapters' stopwatch reports the elapsed time and the setting it ran under."""

from __future__ import annotations

import re

import pytest

from geomis.settings import ChapterClock


def test_chapter_clock_reports_elapsed_minutes_and_the_run_size(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ChapterClock(started=0.0)
    monkeypatch.setattr("geomis.settings.time.perf_counter", lambda: 90.0)
    monkeypatch.setenv("GEOMIS_SIZE", "ci")
    assert clock.minutes() == pytest.approx(1.5)
    line = clock.report()
    assert re.match(r"this page ran in 1\.5 min \(run size ci, \d+ torch threads, \d+ CPUs", line), line
    fresh = ChapterClock()
    assert fresh.started == 90.0  # started when made
