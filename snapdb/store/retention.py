"""The retention policy: which snapshots `snapdb prune` keeps. A pure function, no I/O.

``[store.retention] last = 7, daily = 7, weekly = 4, monthly = 6`` is applied to each source's
snapshots separately (`Candidate.source`, the name a snapshot is filed under), newest first:

- ``last = N``: the N newest snapshots;
- ``daily = N``: the newest snapshot of each of the N most recent UTC days *that have a
  snapshot*; ``weekly`` the same per ISO week (Monday to Sunday, UTC), ``monthly`` per calendar
  month. Periods without a snapshot are not counted: a prune that runs while the snapshot job
  has been broken for a week keeps as much history as before, instead of letting days roll off
  (restic's and borg's reading of the same keys).

Only verified snapshots (manifest readable and every file it lists present) fill a rule's slots;
an unverified one is kept only when something protects it. On top of the rules, `plan` always
keeps: the newest verified snapshot of each source, every id in `protected` (with its reason:
referenced by a rehearsal, a cutover, a rollback), and snapshots dated after `now` (the clock
is injected: a snapshot from a clock ahead of this one is not judged).

A snapshot is kept if any rule keeps it; `Decision.reasons` lists every rule that did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

RULES = ("last", "daily", "weekly", "monthly")


@dataclass(frozen=True)
class Policy:
    """How many snapshots (or periods) each rule keeps; 0 turns a rule off."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def describe(self) -> str:
        return ", ".join(f"{r} = {getattr(self, r)}" for r in RULES)


@dataclass(frozen=True)
class Candidate:
    """One snapshot as the policy sees it."""

    id: str
    created: datetime  # timezone-aware
    source: str
    verified: bool = True


@dataclass
class Decision:
    """`keep` and why (empty `reasons` means: deleted by prune)."""

    id: str
    source: str
    created: datetime
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def period(rule: str, t: datetime) -> tuple:
    """The period of `t` (in UTC) that rule `rule` counts: a day, an ISO week or a month."""
    u = t.astimezone(timezone.utc)
    if rule == "daily":
        return (u.year, u.month, u.day)
    if rule == "weekly":
        iso = u.isocalendar()
        return (iso[0], iso[1])
    if rule == "monthly":
        return (u.year, u.month)
    raise ValueError(rule)


def plan(snapshots: Iterable[Candidate], policy: Policy, now: datetime,
         protected: dict[str, str] | None = None) -> list[Decision]:
    """Decide for every snapshot whether it is kept (see module docstring); newest first."""
    protected = protected or {}
    by_source: dict[str, list[Candidate]] = {}
    for c in snapshots:
        by_source.setdefault(c.source, []).append(c)
    out: list[Decision] = []
    for source in sorted(by_source):
        items = sorted(by_source[source], key=lambda c: (c.created, c.id), reverse=True)
        decisions = {c.id: Decision(c.id, c.source, c.created) for c in items}
        for c in items:
            if c.id in protected:
                decisions[c.id].reasons.append(protected[c.id])
            if c.created > now:
                decisions[c.id].reasons.append("dated after the clock (not judged)")
        verified = [c for c in items if c.verified and c.created <= now]
        if verified:
            decisions[verified[0].id].reasons.append("newest verified snapshot of its source")
        for c in verified[:policy.last]:
            decisions[c.id].reasons.append("last")
        for rule in ("daily", "weekly", "monthly"):
            count = getattr(policy, rule)
            seen: set[tuple] = set()
            for c in verified:
                if len(seen) >= count:
                    break
                p = period(rule, c.created)
                if p not in seen:
                    seen.add(p)
                    decisions[c.id].reasons.append(rule)
        out += [decisions[c.id] for c in items]
    return out
