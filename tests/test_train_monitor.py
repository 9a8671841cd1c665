"""fastsn.train.monitor: a sustained drop makes one event; a blip or a slow start makes none; the loop acts on it."""
from __future__ import annotations

import pytest

from fastsn.train.monitor import Check, CollapseMonitor


def _feed(monitor: CollapseMonitor, modes: list[int], diversity: list[float]) -> list[dict]:
    events = []
    for step, (m, d) in enumerate(zip(modes, diversity), 1):
        event = monitor.check(Check(step * 10, m, d))
        if event is not None:
            events.append(event)
    return events


def test_rising_modes_and_a_one_check_blip_are_no_collapse():
    monitor = CollapseMonitor("warn")
    assert _feed(monitor, [1, 3, 5, 8, 2, 8, 8, 8], [0.3, 0.5, 0.8, 1.0, 0.9, 1.0, 1.0, 1.0]) == []
    assert len(monitor.checks) == 8


def test_sustained_mode_drop_is_one_event_then_the_best_restarts():
    monitor = CollapseMonitor("stop", patience=3)
    events = _feed(monitor, [8, 8, 2, 2, 2, 2, 2, 2], [1.0] * 8)
    assert events == [{"step": 50, "measure": "modes", "value": 2.0, "best": 8.0, "action": "stop"}]


def test_diversity_drop_alone_is_an_event():
    monitor = CollapseMonitor("warn", patience=2)
    events = _feed(monitor, [8] * 5, [1.0, 1.0, 0.2, 0.2, 0.2])
    assert [e["measure"] for e in events] == ["diversity"] and events[0]["step"] == 40


def test_unknown_action_is_refused():
    with pytest.raises(ValueError, match="--on-collapse"):
        CollapseMonitor("explode")
