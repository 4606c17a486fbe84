"""The config loader: env expansion, and errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config
from schemas.canonical import Operation

GOOD = """
providers:
  mel:
    kind: melious
    base_url: http://127.0.0.1:9101/
    api_key: ${MEL_KEY}
  pom:
    kind: pomelo
    endpoint: flux
    base_url: https://pomelo.example
models:
  - name: flux-schnell
    aliases: [black-forest-labs/FLUX.1-schnell]
    targets:
      - {provider: mel, model: flux-schnell, timeout: 30, max_n: 2, operations: [generate]}
      - {provider: pom, model: flux.1}
"""


def test_good_config_expands_env_and_strips_trailing_slash() -> None:
    config = parse_config(GOOD, "good.yaml", environ={"MEL_KEY": "sk-mel-1"})
    mel = config.providers["mel"]
    assert mel.api_key == "sk-mel-1"
    assert mel.base_url == "http://127.0.0.1:9101"
    assert config.providers["pom"].endpoint == "flux"  # type: ignore[union-attr]
    target = config.models[0].targets[0]
    assert (target.timeout, target.max_n, target.operations) == (30.0, 2, [Operation.GENERATE])
    assert config.server.max_body_bytes == 25 * 1024 * 1024


def test_env_default_is_used_when_unset() -> None:
    config = parse_config(GOOD.replace("${MEL_KEY}", "${MEL_KEY:-fallback}"), "x.yaml", environ={})
    assert config.providers["mel"].api_key == "fallback"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, "environment variable MEL_KEY is not set (needed at `$.providers.mel.api_key`)"),
        ("server: {port: abc}", "Expected `int`, got `str` - at `$.server.port`"),
        ("providers: {a: {kind: foo, base_url: 'http://x'}}", "at `$.providers.a.kind`"),
        ("providers: {a: {kind: melious, base_url: 'ftp://x'}}", "base_url must be an http"),
        ("providers: {a: {kind: melious, base_url: 'http://x', timeout: {read: 0}}}", "`$.providers.a.timeout.read`"),
        ("models: [{name: x, targets: [{provider: nope, model: y}]}]", "provider 'nope', which is not under"),
        ("models: [{name: x, targets: []}]", "at `$.models[0].targets`"),
        ("server: {prot: 1}", "unknown field `prot`"),
        ("server: [", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml", environ={})
    assert str(caught.value).startswith("bad.yaml: ")
    assert expected in str(caught.value)


def test_duplicate_alias_is_refused() -> None:
    text = GOOD + "  - name: other\n    aliases: [flux-schnell]\n    targets: [{provider: mel, model: m}]\n"
    with pytest.raises(ConfigError, match="'flux-schnell' is used twice"):
        parse_config(text, "dup.yaml", environ={"MEL_KEY": "k"})


def test_default_config_loads() -> None:
    config = load_config()
    assert config.server.port == 8080
    assert DEFAULT_CONFIG_PATH.exists()


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.replace("${MEL_KEY}", "k"))
    assert main(["check-config", str(good)]) == 0
    assert "ok (2 providers, 1 models)" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: abc}")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "$.server.port" in err

    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the config file" in capsys.readouterr().err
