"""The typed results: what the load generator prints reads back into them, NaN survives the
JSON, and a result of another shape is refused with the path of the field at fault."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest

from bench.results import Latency, Phase, Pooled, ProxyResults, Step, dumps, loads

RECORDED = Path(__file__).parent / "recorded"


def test_a_recorded_run_reads_back_typed_and_writes_out_the_same() -> None:
    results = loads((RECORDED / "full.json").read_text(), ProxyResults)
    assert isinstance(results.fixed["200"].pooled["litellm"], Pooled)
    assert results.steps.litellm is not None and results.steps.litellm.carried == 25
    assert [row.passed for row in results.steps.gateway.rows] == [True, True, False]
    assert results.profiles[2].error and results.profiles[0].categories[0][1] == 50.0
    again = loads(dumps(results), ProxyResults)
    assert again == results or dumps(again) == dumps(results)  # NaN fields compare unequal to themselves


def test_nan_survives_the_json_where_msgspec_json_would_write_null() -> None:
    latency = Latency(count=0)
    text = dumps(latency)
    assert "NaN" in text and "null" not in text
    assert math.isnan(loads(text, Latency).p99)


def test_a_step_keeps_the_name_pass_in_its_json() -> None:
    results = loads((RECORDED / "quick.json").read_text(), ProxyResults)
    step = results.steps.gateway.rows[0]
    raw = json.loads(dumps(step))
    assert raw["pass"] is True and "passed" not in raw
    assert msgspec.convert(raw, Step).passed is True


def test_a_result_of_another_shape_is_refused_with_its_path() -> None:
    raw = json.loads((RECORDED / "quick.json").read_text())
    raw["fixed"]["200"]["pooled"]["gateway"]["latency_ms"]["p50"] = "fast"
    with pytest.raises(
        msgspec.ValidationError, match=r"got `str` - at `\$\.fixed\[...\]\.pooled\[...\]\.latency_ms\.p50`"
    ):
        msgspec.convert(raw, ProxyResults)


def test_latency_minus_the_floor_is_what_a_proxy_adds() -> None:
    through = Latency(count=3, p50=3.0, p95=5.0, p99=9.0)
    floor = Latency(count=3, p50=1.0, p95=1.5, p99=2.0)
    added = through.minus(floor)
    assert (added.p50, added.p95, added.p99) == (2.0, 3.5, 7.0)


def test_a_compact_phase_drops_only_its_latency_list() -> None:
    phase = loads((RECORDED / "quick.json").read_text(), ProxyResults).phases[0]
    full = msgspec.structs.replace(phase, latencies_ms=[1.0, 2.0])
    assert full.compact() == msgspec.structs.replace(full, latencies_ms=[])
    assert full.cpu_ms("emulator") == phase.proc["emulator"].cpu_ms_per_request
    assert math.isnan(full.cpu_ms("litellm"))
    assert isinstance(phase, Phase) and phase.path and phase.label
