"""``make bench-gpu`` stays ready for a GPU: its CPU mode runs every code path on the tiny models.

Checked: the shape and sanity of what it writes (every model, mode, path and concurrency; the
engine's batching as the engine's own rules decide it; the options each mode ran with), and that
the budget stops a run that would outlast it with a report of what was measured. Not timings.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from bench.gpu import (
    JSON_NAME,
    LOG_NAME,
    MD_NAME,
    Cell,
    Report,
    Skip,
    _stop,
    build_pipeline,
    main,
    parse,
    read_report,
    render,
)

MEASURED = [("flux-schnell", "plain"), ("sdxl", "plain"), ("flux-schnell", "cache"), ("flux-schnell", "compile"),
            ("flux-schnell", "both"), ("sdxl", "compile")]  # fmt: skip
OPTIONS = {"plain": "float32", "cache": "float32 first_block:0.05", "compile": "float32 compile:default",
           "both": "float32 first_block:0.05 compile:whole:default"}  # fmt: skip


def _report(out: Path) -> Report:
    return msgspec.json.decode((out / JSON_NAME).read_bytes(), type=Report)


def test_the_cpu_mode_measures_every_model_mode_path_and_concurrency(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--device", "cpu", "--tiny", "--sizes", "64", "--images", "1"]
    assert main([*args, "--budget", "900"]) == 0
    report = _report(tmp_path)
    assert report.ended == "finished", report.skipped
    assert report.machine is not None and report.machine.tiny and report.machine.device == "cpu"
    assert report.machine.energy.startswith("n/a")
    got = [(cell.model, cell.mode, cell.path, cell.concurrency) for cell in report.cells]
    assert got == [(model, mode, path, concurrency) for model, mode in MEASURED
                   for concurrency in (1, 8) for path in ("engine", "bare")]  # fmt: skip
    assert [(skip.model, skip.mode) for skip in report.skipped] == [("sdxl", "cache"), ("sdxl", "both")]
    assert all(skip.reason.startswith("n/a") for skip in report.skipped)
    assert {(setup.model, setup.mode): setup.options for setup in report.setups} == {
        (model, mode): OPTIONS[mode] for model, mode in MEASURED
    }
    for cell in report.cells:
        assert cell.size == 64 and cell.images == (1 if cell.concurrency == 1 else 8)
        assert cell.images_per_s > 0 and cell.seconds > 0 and cell.seconds_per_image > 0
        assert cell.joules_per_image is None and cell.peak_gib is None  # no NVML, no CUDA memory on the CPU
        # 64x64 fits 8 a call in the pixel budget; a step cache draws each image alone, engine and bare alike.
        alone = cell.mode in ("cache", "both")
        assert cell.images_per_call == (1 if cell.concurrency == 1 or alone else 8)
        if cell.path == "engine" and cell.concurrency == 1:
            assert cell.batch_sizes == {1: 1}
        if cell.path == "bare":
            assert cell.batch_sizes == {cell.images_per_call: cell.images // cell.images_per_call}
    table = (tmp_path / MD_NAME).read_text()
    assert table == render(report)
    assert "| flux-schnell | both (float32 first_block:0.05 compile:whole:default, 2 steps) | 64² |" in table
    assert "- sdxl cache: n/a" in table and "Run finished" in table


def test_fp8_runs_only_when_asked_for_and_is_not_applicable_on_the_cpu(tmp_path: Path) -> None:
    assert "fp8" not in parse(["--out", str(tmp_path)]).modes.split(",")  # the default run is the one measured
    args = ["--out", str(tmp_path), "--device", "cpu", "--tiny", "--sizes", "64", "--modes", "fp8", "--budget", "120"]
    assert main(args) == 1  # nothing measured
    report = _report(tmp_path)
    assert report.cells == [] and report.setups == []
    assert [(skip.model, skip.mode, skip.reason) for skip in report.skipped] == [
        (model, "fp8", "n/a: float8 (torchao) needs a CUDA device") for model in ("flux-schnell", "sdxl")
    ]


def test_a_short_budget_ends_the_run_in_time_and_reports_what_was_not_measured(tmp_path: Path) -> None:
    # 20 s: the child gets 5 s (the rest is the margin for stopping it), about what torch takes to start here.
    code = main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--sizes", "64", "--budget", "20"])
    report = _report(tmp_path)
    assert report.elapsed_s < 20
    table = (tmp_path / MD_NAME).read_text()
    assert code == (0 if report.cells else 1)
    if report.ended == "finished":  # the child skipped what did not fit, and said so
        assert any(skip.reason.startswith("budget") for skip in report.skipped)
        assert "budget:" in table
    else:  # still building or measuring at the deadline: stopped, and the report says so
        assert report.ended == "stopped at the budget" and "Run stopped at the budget" in table


def test_a_child_past_the_deadline_is_stopped_with_its_own_processes() -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    started = time.monotonic()
    _stop(child)
    assert child.returncode is not None and time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):  # nothing of its process group is left, once init has reaped it
        for _ in range(50):
            os.killpg(child.pid, 0)
            time.sleep(0.1)


def test_the_report_keeps_every_whole_line_and_drops_one_cut_short(tmp_path: Path) -> None:
    cell = Cell(model="sdxl", mode="plain", size=512, path="engine", concurrency=8, images=8, seconds=2.0,
                images_per_s=4.0, seconds_per_image=1.5, images_per_call=8, joules_per_image=300.0,
                peak_gib=9.5)  # fmt: skip
    bare = msgspec.structs.replace(cell, path="bare", images_per_s=4.2)
    skip = Skip(model="sdxl", mode="compile", reason="budget: 3 s left")
    lines = [msgspec.json.encode(line) for line in (cell, bare, skip)]
    (tmp_path / LOG_NAME).write_bytes(b"\n".join(lines) + b'\n{"kind":"cell","model":"sd')
    report = read_report(tmp_path, 12.0, "stopped at the budget")
    assert report.cells == [cell, bare] and report.skipped == [skip] and report.machine is None
    row = next(line for line in render(report).splitlines() if line.startswith("| sdxl | plain | 512² |"))
    # images/s at 8: engine 4.00 against bare 4.20 is 4.8 % less; energy from the engine's cell; peak memory.
    assert "| 4.00 | 4.20 | 4.8 % | 8 |" in row and "| 300 | 9.5 |" in row
    assert "- sdxl compile: budget: 3 s left" in render(report)


# Parameters of each component, in billions, as the model cards and a loaded copy count them.
PUBLISHED = {
    "flux-schnell": {"transformer": 11.891, "text_encoder_2": 4.762, "text_encoder": 0.123, "vae": 0.084},
    "flux-dev": {"transformer": 11.901, "text_encoder_2": 4.762, "text_encoder": 0.123, "vae": 0.084},
    "sdxl": {"unet": 2.567, "text_encoder_2": 0.695, "text_encoder": 0.123, "vae": 0.084},
}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_the_real_size_pipelines_are_the_published_architectures(model: str) -> None:
    """Built on the meta device (shapes, no memory): what a GPU run builds, with the published sizes."""
    pipeline = build_pipeline(model, "meta", tiny=False)
    billions = {
        name: round(sum(parameter.numel() for parameter in component.parameters()) / 1e9, 3)
        for name, component in pipeline.components.items()
        if hasattr(component, "parameters")
    }
    assert billions == PUBLISHED[model]
    assert str(pipeline.dtype) == "torch.bfloat16"
    # The scheduler's tables stay float32 on the CPU (made outside the bf16 device context).
    assert pipeline.scheduler.sigmas.dtype.is_floating_point and str(pipeline.scheduler.sigmas.device) == "cpu"
    assert str(pipeline.scheduler.sigmas.dtype) == "torch.float32"
    if model != "sdxl":
        assert pipeline.tokenizer_2.model_max_length == 512  # the engine reads 512 T5 tokens, as with the real one
        assert pipeline.transformer.config.guidance_embeds == (model == "flux-dev")
