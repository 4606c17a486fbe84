"""The energy of each batch: read on the device thread around the one call that draws it.

Three meters, picked once when the engine starts (``EnergyMeterSettings.meter``):

- ``nvml``: the GPU's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since
  the driver loaded; Volta and later), for a cuda device. Measured.
- ``rapl``: the CPU packages' RAPL counters under ``/sys/class/powercap``
  (``intel-rapl:N/energy_uj``, which wrap at ``max_energy_range_uj``), where this process may
  read them. Measured; the package counts everything that ran on it meanwhile.
- ``power``: the configured draw (W) x the batch's time. Estimated.

A batch's energy is shared equally among its images: a request gets its images' share.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from schemas.canonical import Energy
from schemas.local import EnergyMeterSettings

__all__ = ["JOULES_PER_KWH", "Meter", "NvmlMeter", "PowerMeter", "RaplMeter", "measured", "pick_meter", "share"]

log = structlog.get_logger("local_backend.energy")
T = TypeVar("T")

JOULES_PER_KWH = 3_600_000.0
MEASURED, ESTIMATED = "measured", "estimated"
# A package domain (intel-rapl:0), not one of its subzones (intel-rapl:0:0), which the package already counts.
_PACKAGE = re.compile(r"^intel-rapl:\d+$")


class Meter(Protocol):
    """Reads energy around a call: ``begin`` before it, ``joules_since`` after it (both on the device thread)."""

    method: str
    source: str

    def begin(self) -> Any: ...

    def joules_since(self, start: Any) -> float: ...


class PowerMeter:
    """The configured draw x time: an estimate."""

    method, source = ESTIMATED, "power"

    def __init__(self, watts: float) -> None:
        self.watts = watts

    def begin(self) -> float:
        return time.perf_counter()

    def joules_since(self, start: float) -> float:
        return self.watts * (time.perf_counter() - start)


class RaplMeter:
    """The CPU packages' RAPL energy counters under ``root`` (the powercap tree), wraparound included."""

    method, source = MEASURED, "rapl"

    def __init__(self, root: str | Path) -> None:
        self.domains: list[tuple[Path, int]] = []  # each package's energy_uj file, and where it wraps
        for zone in sorted(Path(root).glob("intel-rapl:*")):
            if not _PACKAGE.match(zone.name) or _read(zone / "name").startswith("psys"):
                continue  # psys (the whole platform) would count the packages twice
            self.domains.append((zone / "energy_uj", int(_read(zone / "max_energy_range_uj"))))
        if not self.domains:
            raise OSError(f"no RAPL package domain under {root}")
        self.begin()  # readable now, or OSError (the counters are root-only on most kernels since 2020)

    def begin(self) -> list[int]:
        return [int(_read(path)) for path, _ in self.domains]

    def joules_since(self, start: list[int]) -> float:
        total = 0
        for (path, wraps_at), before in zip(self.domains, start, strict=True):
            delta = int(_read(path)) - before
            if delta < 0:  # the counter passed max_energy_range_uj and started again from 0
                delta += wraps_at
            total += delta
        return total / 1e6


class NvmlMeter:
    """One NVIDIA GPU's total-energy counter (millijoules since the driver loaded)."""

    method, source = MEASURED, "nvml"

    def __init__(self, device: str) -> None:
        import pynvml  # nvidia-ml-py: only on a cuda device
        import torch

        pynvml.nvmlInit()
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        try:  # by UUID: CUDA_VISIBLE_DEVICES renumbers torch's devices, never NVML's
            self.handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid else None
        except pynvml.NVMLError:
            self.handle = None
        if self.handle is None:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._read = pynvml.nvmlDeviceGetTotalEnergyConsumption
        self.begin()  # NVMLError (not supported before Volta) here, not on every batch

    def begin(self) -> int:
        return int(self._read(self.handle))

    def joules_since(self, start: int) -> float:
        return (int(self._read(self.handle)) - start) / 1000.0


def pick_meter(settings: EnergyMeterSettings, device: str) -> Meter | None:
    """The meter for ``device``: the one configured, or (``auto``) the best that works here; None for none.

    A meter named outright that cannot read here is logged and falls back like ``auto``.
    """
    if settings.meter == "off":
        return None
    wanted = [settings.meter] if settings.meter != "auto" else []
    order = [*wanted, *(["nvml"] if device.startswith("cuda") else []), "rapl", "power"]
    for kind in dict.fromkeys(order):
        try:
            if kind == "nvml":
                return NvmlMeter(device)
            if kind == "rapl":
                return RaplMeter(settings.rapl_root)
            if kind == "power" and settings.power_watts is not None:
                return PowerMeter(settings.power_watts)
        except Exception as exc:  # a meter that cannot read here: the next one (ImportError, OSError, NVMLError)
            level = log.warning if kind == settings.meter else log.debug
            level("energy_meter_unavailable", meter=kind, reason=f"{type(exc).__name__}: {exc}")
    return None


def measured(meter: Meter | None, work: Callable[..., T], *args: Any) -> tuple[T, float | None]:
    """``work(*args)`` and the joules it took (None without a meter, or when the meter failed to read)."""
    if meter is None:
        return work(*args), None
    start = meter.begin()
    result = work(*args)
    try:
        return result, max(0.0, meter.joules_since(start))
    except Exception as exc:  # a counter that stopped answering loses this batch's figure, not its images
        log.warning("energy_meter_failed", meter=meter.source, reason=f"{type(exc).__name__}: {exc}")
        return result, None


def share(meter: Meter | None, joules: float | None, images: int, batch_images: int) -> Energy | None:
    """The energy of ``images`` of a batch of ``batch_images`` that took ``joules``: an equal share each."""
    if meter is None or joules is None or batch_images <= 0:
        return None
    return Energy(kwh=joules * images / batch_images / JOULES_PER_KWH, method=meter.method, source=meter.source)


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()
