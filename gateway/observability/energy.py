"""Energy and carbon of each answered request: Melious's ``environment_impact`` for every backend.

Where the figure comes from, first that applies (docs/operations.md, "Energy and carbon"):

1. the upstream reported an ``environment_impact`` (a Melious provider): passed on as it is;
2. the backend measured or estimated its energy (``ImageResult.energy``: the local engine,
   in process or on a worker): carbon and water derived with the provider's ``site``, else
   the gateway's ``sustainability`` factors;
3. the target or its provider has ``energy_wh_per_image``: that x the images, ``estimated``;
4. nothing known: no ``environment_impact`` (never a made-up zero).
"""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.observability import metrics
from gateway.routing.router import Plan
from schemas.canonical import Energy, ImageResult
from schemas.sustainability import SiteFactors, environment_impact

__all__ = ["account"]

REPORTED = "reported"  # by the upstream itself


def account(config: GatewayConfig, result: ImageResult, plan: Plan, spent: bool = True) -> Energy | None:
    """Fill ``result.environment_impact`` where it can be known, count it, and return the energy (None: unknown).

    ``spent`` is False for an answer that shares another request's generation or comes from the cache
    (gateway/routing/dedup.py): it carries the footprint of the generation that made its images, but the
    counters count each generation once, with the request that led it.
    """
    impact = result.environment_impact
    if impact is not None:
        energy = Energy(kwh=impact.energy_kwh, method=REPORTED, source="upstream")
    else:
        found = result.energy or _estimate(config, result, plan)
        if found is None:
            return None
        energy = found
        impact = environment_impact(energy.kwh, _site(config, result.provider), result.provider)
        result.environment_impact = impact
    result.energy = energy
    if not spent:
        return energy
    model, provider = plan.model.name, result.provider
    metrics.child(metrics.ENERGY, model, provider, energy.method).inc(energy.kwh)
    metrics.child(metrics.CARBON, model, provider).inc(impact.carbon_g_co2)
    return energy


def _site(config: GatewayConfig, provider: str) -> SiteFactors:
    site = getattr(config.providers.get(provider), "site", None)
    return site if isinstance(site, SiteFactors) else config.sustainability


def _estimate(config: GatewayConfig, result: ImageResult, plan: Plan) -> Energy | None:
    """The configured watt-hours per image of the target that answered (else of its provider) x the images."""
    per_image = next(
        (
            route.target.energy_wh_per_image
            for route in plan.routes
            if route.provider == result.provider and route.target.energy_wh_per_image is not None
        ),
        None,
    )
    if per_image is None:
        per_image = getattr(config.providers.get(result.provider), "energy_wh_per_image", None)
    if per_image is None or not result.images:
        return None
    return Energy(kwh=per_image * len(result.images) / 1000.0, method="estimated", source="config")
