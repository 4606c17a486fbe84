"""The energy meters: RAPL against a real powercap tree the test writes (wraparound too), the estimate,
the choice among them, and the engine's share per request on the tiny model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from local_backend.energy import JOULES_PER_KWH, PowerMeter, RaplMeter, measured, pick_meter, share
from schemas.canonical import ImageRequest
from schemas.local import EnergyMeterSettings
from tests.local_backend.engines import local_settings, running_engine


def zone(root: Path, name: str, kind: str, energy_uj: int, max_uj: int) -> Path:
    """One powercap zone, as the kernel lays it out (``intel-rapl:0`` and its files)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(kind + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> dict[str, Path]:
    """Two packages, a subzone of each (counted by its package already) and a psys domain (the platform)."""
    root = tmp_path / "powercap"
    zones = {
        "pkg0": zone(root, "intel-rapl:0", "package-0", 1_000_000, 262_143_328_850),
        "pkg1": zone(root, "intel-rapl:1", "package-1", 5_000_000, 262_143_328_850),
        "core0": zone(root, "intel-rapl:0:0", "core", 300_000, 262_143_328_850),
        "psys": zone(root, "intel-rapl:2", "psys", 9_000_000, 262_143_328_850),
    }
    zones["root"] = root
    return zones


def test_rapl_sums_the_packages_only(powercap: dict[str, Path]) -> None:
    meter = RaplMeter(powercap["root"])
    start = meter.begin()
    set_energy(powercap["pkg0"], 3_500_000)  # +2.5 J
    set_energy(powercap["pkg1"], 6_000_000)  # +1.0 J
    set_energy(powercap["core0"], 9_300_000)  # a subzone: already in its package
    set_energy(powercap["psys"], 99_000_000)  # the platform: would count the packages twice
    assert meter.joules_since(start) == pytest.approx(3.5)
    assert (meter.method, meter.source) == ("measured", "rapl")


def test_rapl_counts_across_a_wraparound(tmp_path: Path) -> None:
    package = zone(tmp_path, "intel-rapl:0", "package-0", 999_000, 1_000_000)
    meter = RaplMeter(tmp_path)
    start = meter.begin()
    set_energy(package, 500)  # passed 1_000_000 and started again: 1_000 + 500 µJ
    assert meter.joules_since(start) == pytest.approx(1_500 / 1e6)


def test_a_tree_without_packages_or_unreadable_is_no_rapl(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        RaplMeter(tmp_path / "absent")
    package = zone(tmp_path, "intel-rapl:0", "package-0", 1, 10)
    # A counter this process cannot read (root-only on most kernels since 2020; the tests may run as root,
    # so the file is made unreadable to anyone: a directory where the counter should be).
    (package / "energy_uj").unlink()
    (package / "energy_uj").mkdir()
    with pytest.raises(OSError):
        RaplMeter(tmp_path)


def test_the_estimate_is_watts_times_time_and_says_so() -> None:
    meter = PowerMeter(200.0)
    before = time.perf_counter()
    _, joules = measured(meter, time.sleep, 0.02)
    elapsed = time.perf_counter() - before
    assert joules is not None and 0 < joules <= 200.0 * elapsed
    energy = share(meter, joules, 1, 1)
    assert energy is not None and (energy.method, energy.source) == ("estimated", "power")


def test_images_of_a_batch_share_its_energy_equally() -> None:
    meter = PowerMeter(100.0)
    energy = share(meter, 3600.0, images=1, batch_images=4)  # a quarter of 1 Wh
    assert energy is not None and energy.kwh == pytest.approx(0.25 / 1000)
    assert share(None, 3600.0, 1, 4) is None
    assert share(meter, None, 1, 4) is None


def test_pick_meter(powercap: dict[str, Path], tmp_path: Path) -> None:
    rapl_root = str(powercap["root"])
    chosen = pick_meter(EnergyMeterSettings(rapl_root=rapl_root, power_watts=50), "cpu")
    assert isinstance(chosen, RaplMeter)
    nothing_readable = str(tmp_path / "none")
    chosen = pick_meter(EnergyMeterSettings(rapl_root=nothing_readable, power_watts=50), "cpu")
    assert isinstance(chosen, PowerMeter) and chosen.watts == 50
    assert pick_meter(EnergyMeterSettings(rapl_root=nothing_readable), "cpu") is None  # unknown: nothing
    assert pick_meter(EnergyMeterSettings(meter="off", rapl_root=rapl_root, power_watts=50), "cpu") is None
    forced = pick_meter(EnergyMeterSettings(meter="power", rapl_root=rapl_root, power_watts=50), "cpu")
    assert isinstance(forced, PowerMeter)
    # No GPU here: nvml asked for on the CPU cannot read, and the next meter that can is taken.
    assert isinstance(pick_meter(EnergyMeterSettings(meter="nvml", rapl_root=rapl_root), "cpu"), RaplMeter)


async def test_each_request_gets_its_share_of_the_batch() -> None:
    """Two requests drawn in one batch (1 and 3 images): energies in the ratio 1:3, from one reading."""
    settings = local_settings(energy={"meter": "power", "power_watts": 120.0}, batch_window_ms=200)
    async with running_engine(settings) as engine:
        one = ImageRequest(model="tiny", prompt="a", n=1, width=64, height=64, steps=2)
        three = ImageRequest(model="tiny", prompt="b", n=3, width=64, height=64, steps=2)
        first, second = await asyncio.gather(engine.generate(one), engine.generate(three))
    assert engine.stats().batch_sizes == {4: 1}, "both requests drawn in one pipeline call"
    assert first.energy is not None and second.energy is not None
    assert first.energy.method == "estimated" and first.energy.source == "power"
    assert first.energy.kwh > 0
    assert second.energy.kwh == pytest.approx(3 * first.energy.kwh)
    # The whole batch: 120 W over the metered call, which holds the drawing and lies within the request.
    joules = (first.energy.kwh + second.energy.kwh) * JOULES_PER_KWH
    assert first.timings.inference is not None and first.timings.total is not None
    assert 120.0 * first.timings.inference <= joules <= 120.0 * first.timings.total


async def test_without_a_meter_no_energy_is_reported(tmp_path: Path) -> None:
    settings = local_settings(energy={"rapl_root": str(tmp_path)})
    async with running_engine(settings) as engine:
        result = await engine.generate(ImageRequest(model="tiny", prompt="a", width=64, height=64, steps=2))
    assert result.energy is None
