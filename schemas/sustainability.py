"""Where the electricity comes from, and what a kWh of it means: a site's factors and the derivation.

Shared by the gateway's config (``sustainability``), the local backend's settings (a
``site`` of its own, for GPU nodes elsewhere) and the gateway's accounting
(``gateway/observability/energy.py``). The formulas and their sources are in docs/operations.md,
"Energy and carbon":

- facility energy  = IT energy (what the meter read) x PUE
- carbon (g CO2)   = facility energy x grid carbon intensity (location-based, GHG Protocol Scope 2)
- water (L)        = IT energy x WUE (The Green Grid: litres of site water per kWh of IT energy)
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.canonical import EnvironmentImpact

__all__ = ["SiteFactors", "environment_impact", "summed"]

# The world's average grid intensity in 2023 (Ember, Global Electricity Review 2024): the default
# until an operator configures the grid their machines draw from.
WORLD_GRID_G_CO2_PER_KWH = 480.0


class SiteFactors(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A site's factors: grid carbon intensity, PUE, water use effectiveness, renewable share, names."""

    # Grams of CO2(-equivalent) per kWh drawn from the grid; 0..2000 (the dirtiest grids are near 1200).
    carbon_intensity_g_per_kwh: Annotated[float, msgspec.Meta(ge=0, le=2000)] = WORLD_GRID_G_CO2_PER_KWH
    # Power usage effectiveness: facility energy / IT energy, at least 1 (1.0: no overhead counted).
    pue: Annotated[float, msgspec.Meta(ge=1, le=10)] = 1.0
    # Water use effectiveness: litres of site water per kWh of IT energy (0: none counted).
    water_l_per_kwh: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    # The share of the site's electricity from renewables, 0..100 (reported as given; carbon is location-based).
    renewable_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    location: str = "unknown"
    # Melious's `provider_id`; empty: the name of the gateway's provider that answered.
    provider_id: str = ""


def environment_impact(kwh: float, site: SiteFactors, provider: str) -> EnvironmentImpact:
    """The footprint of ``kwh`` of IT energy at ``site`` (formulas in the module's docstring)."""
    return EnvironmentImpact(
        energy_kwh=kwh,
        carbon_g_co2=kwh * site.pue * site.carbon_intensity_g_per_kwh,
        water_liters=kwh * site.water_l_per_kwh,
        renewable_percent=site.renewable_percent,
        provider_id=site.provider_id or provider,
        location=site.location,
    )


def summed(first: EnvironmentImpact | None, second: EnvironmentImpact | None) -> EnvironmentImpact | None:
    """Two parts of one request (a request split into several upstream calls) as one; None unless both are known."""
    if first is None or second is None:
        return None
    return EnvironmentImpact(
        energy_kwh=first.energy_kwh + second.energy_kwh,
        carbon_g_co2=first.carbon_g_co2 + second.carbon_g_co2,
        water_liters=first.water_liters + second.water_liters,
        renewable_percent=first.renewable_percent,
        provider_id=first.provider_id,
        location=first.location,
    )
