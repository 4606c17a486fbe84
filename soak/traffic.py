"""The soak's clients: mixed traffic in every dialect through the load balancer, and what each answer was.

Three modes: ``plain`` (the answer is the image), ``stream`` (server-sent events) and ``async``
(``Prefer: respond-async`` with an ``X-Webhook-URL``, then the job polled to its end). Three keys:
``plain`` (no limit worth the name), ``budget`` (a daily budget spent within the run) and ``limited``
(a rate limit it is driven past). Every answer is classified into a documented outcome, or counted
as outside them (``Outcome.documented`` is False).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

PROMPTS = ["a lighthouse in a storm", "a fox in the snow", "a city at night", "a bowl of fruit", "a red bicycle"]
# A gateway error in any dialect: these statuses, with a JSON envelope (docs/errors.md).
DOCUMENTED_ERRORS = {402: "insufficient_quota", 429: "rate_limited", 502: "upstream_error", 503: "overloaded",
                     504: "timeout"}  # fmt: skip


@dataclass(frozen=True)
class Call:
    """One kind of request: its dialect, path, body, key and mode."""

    dialect: str
    path: str
    body: dict[str, Any]
    key: str = "plain"
    mode: str = "plain"  # plain, stream, async
    image_at: tuple[str, ...] = ()  # where a URL answer's first image URL is (fetched through the LB)


def _prompt() -> str:
    # Unique prompts: no answer is shared with an identical request or served from the result cache.
    return f"{random.choice(PROMPTS)} #{random.getrandbits(40):x}"


CALLS: list[Call] = [
    Call("melious", "/melious/v1/images/generations", {"model": "flux-schnell", "size": "512x512"},
         image_at=("data", "0", "url")),
    Call("nebul", "/nebul/v1/images/generations",
         {"model": "kontext", "size": "512x512", "response_format": "b64_json"}),
    Call("pomelo", "/pomelo/api/v1/midjourney/generate",
         {"model": "5", "width": 512, "height": 512, "num_outputs": 1}, image_at=("images", "0", "url")),
    Call("pomelo", "/api/v1/flux.1", {"aspect_ratio": "1:1"}),
    Call("nebulablock", "/nebulablock/api/v1/images/generation",
         {"model": "sdxl", "num_steps": 25, "guidance_scale": 9, "width": 512, "height": 512}),
    Call("nebulablock", "/nebulablock/v1/images/generate", {"model": "flux-schnell", "n": 1, "size": "512x512"}),
    Call("openai", "/v1/images/generations", {"model": "flux-schnell", "size": "1024x1024"}),
    Call("openai", "/v1/images/generations", {"model": "sdxl-turbo", "size": "64x64"}),
    # streamed
    Call("openai", "/v1/images/generations", {"model": "flux-schnell", "size": "1024x1024", "stream": True},
         mode="stream"),
    Call("nebul", "/nebul/v1/images/generations", {"model": "kontext", "size": "512x512", "stream": True},
         mode="stream"),
    Call("openai", "/v1/images/generations", {"model": "sdxl-turbo", "size": "64x64", "stream": True},
         mode="stream"),
    # async jobs, told by webhook
    Call("melious", "/melious/v1/images/generations", {"model": "flux-schnell", "size": "512x512"}, mode="async"),
    Call("nebul", "/nebul/v1/images/generations", {"model": "kontext", "size": "512x512"}, mode="async"),
    Call("pomelo", "/pomelo/api/v1/midjourney/generate",
         {"model": "5", "width": 512, "height": 512, "num_outputs": 1}, mode="async"),
    Call("nebulablock", "/nebulablock/v1/images/generate", {"model": "flux-schnell", "n": 1, "size": "512x512"},
         mode="async"),
    Call("openai", "/v1/images/generations", {"model": "sdxl-turbo", "size": "64x64"}, mode="async"),
]  # fmt: skip
BUDGET_CALLS: list[Call] = [
    Call("melious", "/melious/v1/images/generations", {"model": "flux-schnell", "size": "512x512"}, key="budget"),
    Call("openai", "/v1/images/generations", {"model": "flux-schnell", "size": "1024x1024"}, key="budget"),
    Call("openai", "/v1/images/generations", {"model": "flux-schnell", "size": "1024x1024", "stream": True},
         key="budget", mode="stream"),
    Call("nebulablock", "/nebulablock/v1/images/generate", {"model": "flux-schnell", "n": 1, "size": "512x512"},
         key="budget", mode="async"),
]  # fmt: skip
LIMITED_CALL = Call("melious", "/melious/v1/images/generations", {"model": "flux-schnell", "size": "512x512"},
                    key="limited")  # fmt: skip


@dataclass
class Outcome:
    """One answer: what was asked, when, how long it took and how it ended."""

    call: Call
    started: float  # seconds since the soak began
    seconds: float
    status: int  # 0: no HTTP answer at all
    outcome: str  # ok, accepted, a documented error code, or what was outside them
    documented: bool
    images: int = 0  # images answered (plain, stream); for a job, set when it ends
    detail: str = ""  # the start of the body of an answer outside the documented outcomes


@dataclass
class JobRecord:
    """An accepted job and what became of it."""

    id: str
    key: str
    dialect: str
    accepted_at: float
    ended_at: float | None = None
    status: str = "queued"
    lost: str = ""  # why it counts as lost (404 after 202, never ended)


@dataclass
class Traffic:
    """The clients' shared record of everything sent and answered."""

    base_url: str
    keys: dict[str, str]
    webhook_url: str
    t0: float
    outcomes: list[Outcome] = field(default_factory=list)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    fetches: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def headers(self, call: Call) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.keys[call.key]}"}
        if call.mode == "async":
            headers |= {"Prefer": "respond-async", "X-Webhook-URL": self.webhook_url}
        return headers

    async def send(self, http: httpx.AsyncClient, call: Call) -> Outcome:
        body = {**call.body, "prompt": _prompt()}
        started = self.now()
        begin = time.monotonic()
        try:
            detail = ""
            if call.mode == "stream":
                status, outcome, documented, images = await self._stream(http, call, body)
            else:
                answer = await http.post(self.base_url + call.path, json=body, headers=self.headers(call))
                status = answer.status_code
                outcome, documented, images = self._classify(call, answer)
                detail = "" if documented else answer.text[:300]
                if status == 202:
                    job_id = answer.json()["id"]
                    self.jobs[job_id] = JobRecord(job_id, call.key, call.dialect, started)
                elif status == 200 and call.image_at:
                    await self._fetch(http, answer.json(), call.image_at)
        except httpx.HTTPError as exc:
            status, outcome, documented, images = 0, f"transport:{type(exc).__name__}", False, 0
            detail = str(exc)[:300]
        result = Outcome(call, started, time.monotonic() - begin, status, outcome, documented, images, detail)
        self.outcomes.append(result)
        return result

    def _classify(self, call: Call, answer: httpx.Response) -> tuple[str, bool, int]:
        status = answer.status_code
        if status == 200:
            return "ok", True, 1
        if status == 202 and call.mode == "async":
            return "accepted", True, 0
        try:
            envelope = answer.json()
        except ValueError:
            envelope = None
        if status in DOCUMENTED_ERRORS and isinstance(envelope, dict):
            name = DOCUMENTED_ERRORS[status]
            # A refusal is documented where the key can meet it: a budget for the budgeted key only.
            return name, not (status == 402 and call.key != "budget"), 0
        if envelope is None and status in (502, 503, 504):
            return f"lb_{status}", False, 0  # HAProxy's own page: the replica went away with the request
        return f"http_{status}", False, 0

    async def _stream(self, http: httpx.AsyncClient, call: Call, body: dict[str, Any]) -> tuple[int, str, bool, int]:
        url = self.base_url + call.path
        async with http.stream("POST", url, json=body, headers=self.headers(call)) as answer:
            if answer.status_code != 200:
                await answer.aread()
                outcome, documented, _ = self._classify(call, answer)
                return answer.status_code, outcome, documented, 0
            last = ""
            async for line in answer.aiter_lines():
                if line.startswith("event: "):
                    last = line[7:]
                elif line.startswith("data: ") and last == "error":
                    code = json.loads(line[6:]).get("error", {}).get("code") or "error"
                    return 200, f"stream_error:{code}", True, 0
            if last.endswith(".completed"):
                return 200, "ok", True, 1
            return 200, "stream_cut", False, 0

    async def _fetch(self, http: httpx.AsyncClient, answer: Any, path: tuple[str, ...]) -> None:
        """GET the answer's image URL through the load balancer (any replica serves it from the bucket)."""
        for step in path:
            answer = answer[int(step)] if step.isdigit() else answer[step]
        try:
            fetched = await http.get(str(answer))
            self.fetches[f"{fetched.status_code}"] += 1
        except httpx.HTTPError as exc:
            self.fetches[f"transport:{type(exc).__name__}"] += 1


async def client_loop(traffic: Traffic, http: httpx.AsyncClient, calls: list[Call], pace_s: float) -> None:
    """Send ``calls`` in random order until the traffic stops, at most one each ``pace_s``."""
    while not traffic.stop.is_set():
        begin = time.monotonic()
        await traffic.send(http, random.choice(calls))
        rest = pace_s - (time.monotonic() - begin)
        if rest > 0:
            with _suppress_timeout():
                await asyncio.wait_for(traffic.stop.wait(), rest)


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is TimeoutError


async def follow_jobs(traffic: Traffic, http: httpx.AsyncClient, until: asyncio.Event) -> None:
    """Poll every accepted job to its end through the load balancer; a 404 after a 202 is a lost job."""
    while True:
        open_jobs = [job for job in list(traffic.jobs.values()) if job.ended_at is None and not job.lost]
        if until.is_set() and not open_jobs:
            return
        for job in open_jobs:
            try:
                answer = await http.get(
                    f"{traffic.base_url}/v1/jobs/{job.id}",
                    headers={"Authorization": f"Bearer {traffic.keys[job.key]}"},
                )
            except httpx.HTTPError:
                continue
            if answer.status_code == 404:
                job.lost = "404 after it was accepted"
            elif answer.status_code == 200:
                body = answer.json()
                job.status = body["status"]
                if job.status in ("succeeded", "failed", "canceled"):
                    job.ended_at = traffic.now()
        await asyncio.sleep(0.5)
