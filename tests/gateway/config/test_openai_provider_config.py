"""A `kind: openai` provider entry (gateway/config.py OpenAIProvider): its defaults, its declarations, its errors."""

from __future__ import annotations

import pytest

from adapters import build_adapter
from adapters.openai import OpenAIAdapter, wire_settings
from gateway.config import ConfigError, OpenAIProvider, parse_config
from schemas.canonical import Operation

BASE = """
providers:
  oa:
    kind: openai
    base_url: https://api.openai.com/v1/
    api_key: sk-x
{extra}
models:
  - name: gpt
    targets:
      - provider: oa
        model: gpt-image-1
{target}
"""


def config(extra: str = "", target: str = "") -> OpenAIProvider:
    parsed = parse_config(BASE.format(extra=extra, target=target), "oa.yaml", environ={})
    provider = parsed.providers["oa"]
    assert isinstance(provider, OpenAIProvider)
    return provider


def test_defaults() -> None:
    provider = config()
    assert provider.base_url == "https://api.openai.com/v1"
    assert provider.operations == [Operation.GENERATE, Operation.EDIT, Operation.VARIATION]
    assert (provider.response_format, provider.stream, provider.extensions) == ("b64_json", False, False)
    adapter = build_adapter("openai", "oa", provider, client=None)  # type: ignore[arg-type]
    assert isinstance(adapter, OpenAIAdapter)
    assert set(adapter.endpoints) == set(provider.operations)
    assert adapter._urls["/images/edits"] == "https://api.openai.com/v1/images/edits"


def test_declarations() -> None:
    extra = """    response_format: null
    stream: true
    organization: org-1
    project: proj-1
    headers: {x-portkey-provider: openai}
    operations: [generate, edit]
    extensions: [seed, steps]
    extension_names: {steps: steps}
    max_n_per_call: 1"""
    provider = config(extra)
    settings = wire_settings(provider)  # type: ignore[arg-type]
    assert settings.response_format is None and settings.max_n_per_call == 1
    assert dict(settings.extensions) == {"seed": "seed", "steps": "steps"}
    assert dict(wire_settings(config("    extensions: true")).extensions) == {  # type: ignore[arg-type]
        "seed": "seed",
        "steps": "num_inference_steps",
        "guidance": "guidance_scale",
        "negative_prompt": "negative_prompt",
    }
    adapter = build_adapter("openai", "oa", provider, client=None)  # type: ignore[arg-type]
    assert set(adapter.endpoints) == {Operation.GENERATE, Operation.EDIT}
    assert adapter._json_headers["OpenAI-Organization"] == "org-1"  # type: ignore[attr-defined]
    assert adapter._auth["OpenAI-Project"] == "proj-1"  # type: ignore[attr-defined]
    assert adapter._auth["x-portkey-provider"] == "openai"  # type: ignore[attr-defined]


def test_targets_do_only_what_the_provider_declares() -> None:
    text = BASE.format(extra="    operations: [generate, edit]", target="")
    parsed = parse_config(text, "oa.yaml", environ={})
    assert parsed.models[0].targets[0].operations == [Operation.GENERATE, Operation.EDIT]
    narrowed = BASE.format(extra="    operations: [generate, edit]", target="        operations: [edit, variation]")
    assert parse_config(narrowed, "oa.yaml", environ={}).models[0].targets[0].operations == [Operation.EDIT]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("    extensions: [seed, cfg]", "`$.providers.oa.extensions"),
        ("    operations: []", "`$.providers.oa.operations`"),
        ("    response_format: png", "`$.providers.oa.response_format`"),
        ("    max_n_per_call: 11", "`$.providers.oa.max_n_per_call`"),
        ("    stream_max_events: 0", "`$.providers.oa.stream_max_events`"),
    ],
)
def test_bad_declarations_name_their_field(extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(extra)
    assert expected in str(raised.value)
