"""What a person sees of a run's progress: pure functions from status.json and launcher.json documents.

Used by the launcher's live view and by `monitor_progress`, so both say the same thing. A shard
recorded as running is shown dead when its pid is gone (same host) or its heartbeat is stale,
unless the launcher says it suspended it on purpose (--cpu-limit).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Mapping, Sequence

import psutil

from shardrun.states import ShardPhase, ShardState

ACTIVE_STATES = (ShardState.STARTING, ShardState.RUNNING)
ENDED_WELL = (ShardState.COMPLETED, ShardState.COMPLETED_WITH_FAILURES)


@dataclass(frozen=True)
class ShardView:
    shard: str
    state: str
    done: int
    total: int
    ok: int
    skipped: int
    failed: int
    current_user: str | None
    rate_per_hour: float | None
    eta_seconds: float | None
    scheduler: str | None = None  # the cluster scheduler's view of the shard's job (SLURM), when it has one

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES or self.state in (ShardPhase.SUSPENDED, ShardPhase.WAITING)


def liveness(doc: Mapping[str, Any], now: datetime, stale_after: float, launcher_phase: str | None = None) -> str:
    state = doc.get("state", "unknown")
    if state not in ACTIVE_STATES:
        return state
    if launcher_phase == ShardPhase.SUSPENDED:
        return ShardPhase.SUSPENDED.value
    pid = doc.get("pid")
    if doc.get("host") == socket.gethostname() and isinstance(pid, int) and not psutil.pid_exists(pid):
        return "dead (process gone)"
    updated = doc.get("updated_at")
    if updated:
        age = (now - datetime.fromisoformat(updated)).total_seconds()
        if age > stale_after:
            return f"dead? (no heartbeat for {age:.0f} s)"
    return state


UNREADABLE = "unreadable status.json"


def _typed(doc: Mapping[str, Any], key: str, types: tuple[type, ...]) -> Any:
    """doc[key] if absent, null or of one of `types` (bool is not a number); else a ValueError."""
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ValueError(f"status.json field {key!r} is {type(value).__name__}")
    return value


def _checked(doc: Mapping[str, Any]) -> None:
    """A status.json of the wrong shape is refused here, so nothing below fails on it."""
    if not isinstance(doc, Mapping):
        raise ValueError("status.json is not a JSON object")
    _typed(doc, "state", (str,))
    _typed(doc, "host", (str,))
    _typed(doc, "current_user", (str,))
    for key in ("pid", "users_done", "users_total", "users_ok", "users_skipped", "users_failed"):
        _typed(doc, key, (int,))
    for key in ("rate_users_per_hour", "eta_seconds"):
        _typed(doc, key, (int, float))
    updated = _typed(doc, "updated_at", (str,))
    if updated is not None and datetime.fromisoformat(updated).tzinfo is None:
        raise ValueError("status.json field 'updated_at' has no time zone")


def unreadable_view(shard: str) -> ShardView:
    """A shard whose status.json cannot be read as one (not a JSON object, fields of the wrong type)."""
    return ShardView(shard, UNREADABLE, 0, 0, 0, 0, 0, None, None, None)


def shard_view(
    shard: str,
    doc: Mapping[str, Any] | None,
    now: datetime,
    stale_after: float,
    launcher_phase: str | None = None,
    expected_total: int | None = None,
    scheduler: str | None = None,
) -> ShardView:
    """One shard's row; `expected_total` (from the launcher) counts a shard that has not written status yet.

    A status.json of the wrong shape gives the row 'unreadable status.json' instead of an exception.
    """
    if doc is None:
        return ShardView(shard, launcher_phase or ShardPhase.WAITING.value, 0, expected_total or 0, 0, 0, 0, None, None,
                         None, scheduler)
    try:
        _checked(doc)
    except ValueError:
        return replace(unreadable_view(shard), scheduler=scheduler)
    return ShardView(
        shard=shard,
        state=liveness(doc, now, stale_after, launcher_phase),
        done=int(doc.get("users_done") or 0),
        total=int(doc.get("users_total") or 0),
        ok=int(doc.get("users_ok") or 0),
        skipped=int(doc.get("users_skipped") or 0),
        failed=int(doc.get("users_failed") or 0),
        current_user=doc.get("current_user"),
        rate_per_hour=doc.get("rate_users_per_hour"),
        # a suspended shard's ETA in its status.json was written before it was stopped: not true now
        eta_seconds=(doc.get("eta_seconds") if doc.get("state") in ACTIVE_STATES
                     and launcher_phase != ShardPhase.SUSPENDED else None),
        scheduler=scheduler,
    )


def overall_eta(views: Sequence[ShardView], parallel: int | None = None) -> float | None:
    """Seconds until the whole run ends: remaining users at the pooled per-user time, over the parallelism.

    With every shard running this is close to the slowest shard's ETA; with shards still waiting
    (--max-parallel) it accounts for their users too. None until some shard has a measured rate.
    """
    remaining = sum(max(v.total - v.done, 0) for v in views if v.state not in ENDED_WELL)
    rates = [v.rate_per_hour for v in views if v.rate_per_hour]
    if remaining == 0:
        return 0.0
    if not rates or not any(v.active for v in views):
        return None  # nothing measured yet, or nothing running that could finish the rest
    seconds_per_user = 3600.0 / (sum(rates) / len(rates))
    lanes = min(parallel or len(views), len(views)) or 1
    slowest = max((v.eta_seconds or 0.0) for v in views)
    return max(remaining * seconds_per_user / lanes, slowest)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def suspension_note(views: Sequence[ShardView], cpu: Mapping[str, Any] | None = None) -> str | None:
    """What --cpu-limit holds suspended and why, from launcher.json's `cpu` (its limit and latest reading);
    None when no shard is suspended. It stands where the overall ETA would: with shards held back for as
    long as the CPUs stay busy, no ETA is true."""
    suspended = [v.shard for v in views if v.state == ShardPhase.SUSPENDED]
    if not suspended:
        return None
    what = f"shard{'s' if len(suspended) > 1 else ''} {', '.join(suspended)} suspended by --cpu-limit"
    cpu = cpu if isinstance(cpu, Mapping) else {}
    limit, busy, own = (cpu.get(key) for key in ("limit", "cpus_percent", "run_percent"))
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (limit, busy, own)):
        return what
    use = f"the CPUs are {busy:.0f}% busy: this run {own:.0f}%, other programs {max(busy - own, 0):.0f}%"
    if busy > limit:
        return f"{what} {limit:g}% ({use})"
    return f"{what} {limit:g}% ({use}; one more shard would take them above {limit:g}%)"


def render_table(views: Sequence[ShardView], parallel: int | None = None,
                 cpu: Mapping[str, Any] | None = None) -> list[str]:
    """One row per shard; a `slurm` column when the scheduler's view is known; `cpu`: launcher.json's
    (suspension_note)."""
    with_scheduler = any(v.scheduler is not None for v in views)
    slurm_head = f" {'slurm':<22}" if with_scheduler else ""
    lines = [f"{'shard':<7} {'state':<24}{slurm_head} {'done/total':>11} {'failed':>6} {'users/h':>8} {'ETA':>7}"
             "  current user"]
    for v in views:
        rate = f"{v.rate_per_hour:.0f}" if v.rate_per_hour else "-"
        current = (v.current_user or "")[:30]
        slurm = f" {(v.scheduler or '-')[:22]:<22}" if with_scheduler else ""
        lines.append(
            f"{v.shard:<7} {v.state[:24]:<24}{slurm} {f'{v.done}/{v.total}':>11} {v.failed:>6} {rate:>8}"
            f" {format_seconds(v.eta_seconds):>7}  {current}"
        )
    done = sum(v.done for v in views)
    total = sum(v.total for v in views)
    lines.append(f"overall: {done}/{total} users, {_eta_or_suspension(views, parallel, cpu)}")
    return lines


def plain_line(views: Sequence[ShardView], parallel: int | None = None, cpu: Mapping[str, Any] | None = None) -> str:
    """One line for logs and CI, where a redrawn table would be noise."""
    parts = [f"{v.shard} {v.state} {v.done}/{v.total}" for v in views]
    return f"progress: {'; '.join(parts)}; overall {_eta_or_suspension(views, parallel, cpu)}"


def _eta_or_suspension(views: Sequence[ShardView], parallel: int | None, cpu: Mapping[str, Any] | None) -> str:
    note = suspension_note(views, cpu)
    return f"no ETA, {note}" if note else f"ETA {format_seconds(overall_eta(views, parallel))}"
