"""A structlog stand-in for the agents under test: records every event with its fields; `of(event)` lists the
fields of one kind of event in order."""

from __future__ import annotations

from typing import Any


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = _record

    def of(self, event: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.events if name == event]
