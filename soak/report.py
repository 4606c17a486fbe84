"""The soak's one summary: what was sent and answered, jobs, webhooks, budgets, memory, alerts, and the goals."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from soak import configs
from soak.faults import EXPECTED, Fault
from soak.topology import Part
from soak.traffic import Outcome, Traffic
from soak.webhooks import Receiver

MIB = 1024 * 1024
# A process's memory is bounded when its last sample is within this of its sample at half time.
GROWTH_FACTOR = 1.25
GROWTH_SLACK = 48 * MIB
CHECKED_FOR_GROWTH = ("gateway-", "worker-")  # the project's own processes
MICROS = 1_000_000


@dataclass
class Measured:
    duration_s: float
    for_s: int
    window_s: int
    traffic: Traffic
    faults: list[Fault]
    receiver: Receiver
    parts: list[Part]
    mid_rss: dict[str, int]
    budget: int  # micros spent, as Redis holds it
    fired: dict[str, list[str]]
    still_firing: list[str]
    workdir: Path


@dataclass
class Goal:
    name: str
    met: bool
    detail: str


def _cut_by_kill(outcome: Outcome, kills: list[float]) -> bool:
    """An answer the load balancer gave because the replica holding the request was SIGKILLed."""
    if outcome.documented or not (outcome.outcome.startswith(("lb_", "transport", "stream_cut"))):
        return False
    end = outcome.started + outcome.seconds
    return any(outcome.started - 1 <= kill <= end + 1 for kill in kills)


def _quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} / {values[0]:.2f}"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"{cuts[49]:.2f} / {cuts[98]:.2f}"


def summary(m: Measured) -> tuple[str, list[Goal]]:
    """The summary's text and its goals."""
    t = m.traffic
    lines: list[str] = []
    add = lines.append
    kills = [f.began for f in m.faults if f.began is not None and "replica" in f.name]
    redis_windows = [(f.began - 1, (f.ended or f.began) + 3) for f in m.faults if "Redis" in f.name and f.began]

    add(f"# Soak: {m.duration_s:g} s of traffic, {len(t.outcomes)} requests")
    add(f"(soak rules: deploy/prometheus/alerts.yml with every `for:` {m.for_s}s and every window [{m.window_s}s]; "
        f"files and logs in {m.workdir})")  # fmt: skip
    add("")
    add("## Faults")
    for fault in m.faults:
        when = f"{fault.began:.0f}-{fault.ended:.0f} s" if fault.began is not None and fault.ended else "not run"
        add(f"- {when}: {fault.name}{'  ERROR ' + fault.error if fault.error else ''}")

    add("")
    add("## Requests by outcome and dialect")
    dialects = sorted({o.call.dialect for o in t.outcomes})
    table: dict[str, Counter[str]] = defaultdict(Counter)
    outside: list[Outcome] = []
    cut: list[Outcome] = []
    for o in t.outcomes:
        label = o.outcome
        if _cut_by_kill(o, kills):
            label = f"{o.outcome} (cut by the replica kill)"
            cut.append(o)
        elif not o.documented:
            label = f"{o.outcome} (OUTSIDE the documented outcomes)"
            outside.append(o)
        table[label][o.call.dialect] += 1
    add("| outcome | " + " | ".join(dialects) + " | all |")
    add("|---|" + "---|" * (len(dialects) + 1))
    for label in sorted(table, key=lambda k: -sum(table[k].values())):
        row = table[label]
        add(f"| {label} | " + " | ".join(str(row[d]) for d in dialects) + f" | {sum(row.values())} |")
    for o in outside[:5]:
        add(f"- outside: {o.call.mode} {o.call.path} {o.call.body} at {o.started:.0f} s: {o.status} {o.detail!r}")
    by_mode = Counter(f"{o.call.mode}/{o.call.key}" for o in t.outcomes)
    add("")
    add("By mode/key: " + ", ".join(f"{k} {v}" for k, v in sorted(by_mode.items())))
    if t.fetches:
        add("Image URLs fetched through the load balancer: " + ", ".join(f"{k}: {v}" for k, v in t.fetches.items()))

    add("")
    add("## Latency (seconds, p50 / p99)")
    ok = [o for o in t.outcomes if o.outcome in ("ok", "accepted")]
    for mode in ("plain", "stream", "async"):
        values = [o.seconds for o in ok if o.call.mode == mode]
        what = "submit (202)" if mode == "async" else "answered 200"
        add(f"- {mode}: {_quantiles(values)}  ({len(values)} {what})")
    slowest = sorted(ok, key=lambda o: -o.seconds)[:3]
    add("- slowest: " + "; ".join(
        f"{o.seconds:.1f} s {o.call.mode} {o.call.dialect} {o.call.body.get('model', '')} at {o.started:.0f} s"
        for o in slowest))  # fmt: skip
    ends = [j.ended_at - j.accepted_at for j in t.jobs.values() if j.ended_at is not None and j.status == "succeeded"]
    add(f"- async, submit to job end: {_quantiles(ends)}  ({len(ends)} jobs)")

    add("")
    add("## Jobs")
    jobs = list(t.jobs.values())
    ended = [j for j in jobs if j.ended_at is not None]
    lost = [j for j in jobs if j.lost]
    statuses = Counter(j.status for j in ended)
    add(f"- accepted {len(jobs)}, finished {len(ended)} ({', '.join(f'{k} {v}' for k, v in statuses.items()) or '-'})"
        f", lost {len(lost)}")  # fmt: skip
    for job in lost[:10]:
        add(f"  - lost {job.id[:12]}... ({job.dialect}, accepted at {job.accepted_at:.0f} s): {job.lost}")

    add("")
    add("## Webhooks")
    r = m.receiver
    told = {j.id for j in ended} & set(r.events)
    untold = [j for j in ended if j.id not in r.events]
    add(f"- deliveries {r.deliveries}, verified {r.deliveries - r.unverified} (standardwebhooks), "
        f"unverified {r.unverified}")  # fmt: skip
    add(f"- ended jobs told {len(told)} of {len(ended)}; told more than once (at least once) {len(r.repeats)}")

    add("")
    add("## Budget (key `budget`, 0.01 USD an image of flux-schnell)")
    budget_ok = [o for o in t.outcomes if o.call.key == "budget" and o.outcome == "ok"]
    budget_jobs = [j for j in ended if j.key == "budget" and j.status == "succeeded"]
    in_outage = [o for o in budget_ok if any(a <= o.started <= b for a, b in redis_windows)]
    cut_budget = [o for o in cut if o.call.key == "budget"]
    told_micros = (len(budget_ok) + len(budget_jobs)) * int(configs.PRICE_PER_IMAGE * MICROS)
    outside_outage = told_micros - len(in_outage) * int(configs.PRICE_PER_IMAGE * MICROS)
    allowed = int(configs.BUDGET_USD * MICROS)
    refused = sum(1 for o in t.outcomes if o.call.key == "budget" and o.outcome == "insufficient_quota")
    add(f"- allowed {allowed / MICROS:.2f} USD a day; spent (Redis) {m.budget / MICROS:.2f} USD; "
        f"answered to clients {told_micros / MICROS:.2f} USD ({len(budget_ok)} answers, {len(budget_jobs)} jobs); "
        f"refused 402: {refused}")  # fmt: skip
    add(
        f"- answered while Redis was restarting (in-memory fallback, not in Redis): {len(in_outage)}; "
        f"budgeted requests cut by the replica kill (reservation never settled): {len(cut_budget)}"
    )
    slack = (len(in_outage) + len(cut_budget)) * int(configs.PRICE_PER_IMAGE * MICROS)
    over = max(0, told_micros - allowed)
    if over:
        add(
            f"- clients were charged {over / MICROS:.2f} USD past the budget: answers admitted by each replica's "
            "in-memory limiter while Redis restarted (`redis.budgets_on_failure: open`) know nothing of what Redis "
            "had spent"
        )
    # Exact: Redis's counter is what clients were charged while it was there (give or take the requests whose
    # admission straddled its restart, and reservations a SIGKILLed replica never settled), never past the
    # budget; only a fail-open fallback for budgets (`redis.budgets_on_failure: open`, not the default) may pass
    # it, by no more than it admitted.
    budget_exact = (
        m.budget <= allowed
        and abs(m.budget - outside_outage) <= slack
        and over <= len(in_outage) * int(configs.PRICE_PER_IMAGE * MICROS)
    )

    add("")
    add("## Memory (RSS, MiB: half time / peak / final)")
    growth: list[str] = []
    for part in m.parts:
        mid = m.mid_rss.get(part.name, 0)
        add(f"- {part.name}: {mid / MIB:.0f} / {part.peak_rss / MIB:.0f} / {part.final_rss / MIB:.0f}"
            f"{f'  (restarted {part.restarts}x)' if part.restarts else ''}")  # fmt: skip
        checked = part.name.startswith(CHECKED_FOR_GROWTH) and mid and not part.restarts
        if checked and part.final_rss > max(mid * GROWTH_FACTOR, mid + GROWTH_SLACK):
            growth.append(part.name)

    add("")
    add("## Alerts (Prometheus, soak rules)")
    for name, cause in EXPECTED.items():
        fired = name in m.fired
        state = ("fired " + "; ".join(m.fired[name])) if fired else "NOT fired"
        resolved = "resolved" if name not in m.still_firing else "STILL FIRING"
        add(f"- {name} (expected: {cause}): {state}, {resolved if fired else '-'}")
    unexpected = sorted(set(m.fired) - set(EXPECTED))
    others = [f"{name} ({'; '.join(m.fired[name])})" for name in unexpected]
    add(f"- not expected, fired: {', '.join(others) or 'none'}")

    goals = [
        Goal("0 accepted jobs lost", not lost, f"{len(lost)} lost of {len(jobs)}"),
        Goal("0 answers outside the documented outcomes", not outside,
             f"{len(outside)} outside ({', '.join(sorted({o.outcome for o in outside})) or '-'}); "
             f"{len(cut)} cut by the replica kill"),
        Goal("every ended job told by a verified webhook", not untold and r.unverified == 0,
             f"{len(untold)} untold, {r.unverified} unverified"),
        Goal("budgets exact", budget_exact,
             f"spent {m.budget / MICROS:.2f} of {allowed / MICROS:.2f} USD, answered outside Redis's restart "
             f"{outside_outage / MICROS:.2f} USD, past the budget {over / MICROS:.2f} USD (fail-open only)"),
        Goal("memory bounded", not growth,
             f"grew past x{GROWTH_FACTOR} after half time: {', '.join(growth) or 'none'}"),
        Goal("every expected alert fired and resolved",
             all(n in m.fired and n not in m.still_firing for n in EXPECTED),
             f"fired {sum(n in m.fired for n in EXPECTED)} of {len(EXPECTED)}; still firing: "
             f"{', '.join(m.still_firing) or 'none'}"),
        Goal("every fault injected and undone", all(f.ended and not f.error for f in m.faults),
             "; ".join(f.error for f in m.faults if f.error) or "all"),
    ]  # fmt: skip
    add("")
    add("## Goals")
    for goal in goals:
        add(f"- [{'met' if goal.met else 'MISSED'}] {goal.name}: {goal.detail}")
    return "\n".join(lines) + "\n", goals
