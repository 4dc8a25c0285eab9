"""What operators ask of the store beyond the API (the console's figures): plain records."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SubscriptionHealth:
    """One subscription at a glance: its last attempt and how the last 24 hours went."""

    last_attempt_at: float | None = None
    last_outcome: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    attempts: int = 0  # attempts in the window (skips not counted)
    delivered: int = 0  # of which delivered
    waiting: int = 0  # messages queued now (pending or in flight)

    @property
    def success_rate(self) -> float | None:
        return None if self.attempts == 0 else self.delivered / self.attempts


@dataclass(frozen=True)
class Minute:
    """One minute of delivery activity; ``start`` is Unix seconds at the minute's start."""

    start: float
    delivered: int = 0
    failed: int = 0
    latency_p50_ms: float | None = None  # push received -> delivered, messages delivered then
    latency_p95_ms: float | None = None


@dataclass(frozen=True)
class Activity:
    """Delivery activity per minute over a window, oldest first. ``capped``: the window held more
    rows than were read, so the oldest minutes are short of what happened."""

    minutes: list[Minute] = field(default_factory=list)
    capped: bool = False
