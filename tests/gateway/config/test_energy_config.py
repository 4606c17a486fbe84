"""The energy settings: defaults that change nothing, and bad values named by their field."""

from __future__ import annotations

import pytest
import yaml

from gateway.config import ConfigError, parse_config
from schemas.local import LocalBackendSettings
from schemas.sustainability import WORLD_GRID_G_CO2_PER_KWH


def config_text(**sections: object) -> str:
    raw = {
        "providers": {"gpu": {"kind": "local", "models": {"tiny": {"path": "builtin:tiny-sd"}}}},
        "models": [{"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]}],
        **sections,
    }
    return yaml.safe_dump(raw)


def test_defaults() -> None:
    config = parse_config(config_text())
    assert config.sustainability.carbon_intensity_g_per_kwh == WORLD_GRID_G_CO2_PER_KWH
    assert config.sustainability.pue == 1.0
    provider = config.providers["gpu"]
    assert isinstance(provider, LocalBackendSettings)
    assert provider.energy.meter == "auto" and provider.energy.power_watts is None and provider.site is None


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"sustainability": {"carbon_intensity_g_per_kwh": 2500}}, "$.sustainability.carbon_intensity_g_per_kwh"),
        ({"sustainability": {"carbon_intensity_g_per_kwh": -1}}, "$.sustainability.carbon_intensity_g_per_kwh"),
        ({"sustainability": {"carbon_intensity_g_per_kwh": "dirty"}}, "$.sustainability.carbon_intensity_g_per_kwh"),
        ({"sustainability": {"pue": 0.9}}, "$.sustainability.pue"),
        ({"sustainability": {"renewable_percent": 101}}, "$.sustainability.renewable_percent"),
        ({"sustainability": {"grid": 1}}, "$.sustainability"),
    ],
)
def test_a_bad_site_factor_is_named(sections: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(**sections))
    assert f"at `{field}`" in str(caught.value), str(caught.value)


def test_bad_local_energy_and_estimates_are_named() -> None:
    text = config_text()
    raw = yaml.safe_load(text)
    raw["providers"]["gpu"]["energy"] = {"power_watts": -5}
    raw["models"][0]["targets"][0]["energy_wh_per_image"] = 0
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(raw))
    message = str(caught.value)
    assert "$.providers.gpu.energy.power_watts" in message
    assert "$.models[0].targets[0].energy_wh_per_image" in message
