"""The config loader: env expansion, and errors that name the file and the field."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway.cli import build_parser, listen_address, main
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
        ("server: {idempotency: {ttl_s: 0}}", "at `$.server.idempotency.ttl_s`"),
        ("server: {idempotency: {max_key_chars: 5000}}", "at `$.server.idempotency.max_key_chars`"),
        ("server: {idempotency: {memory_entries: 0}}", "at `$.server.idempotency.memory_entries`"),
        ("server: [", "not valid YAML"),
        (
            "models: [{name: x, default_response_format: png, targets: [{provider: p, model: y}]}]",
            "default_response_format must be url or b64_json, not 'png' - at `$.models[0].default_response_format`",
        ),
    ],
)
def test_bad_config_names_file_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml", environ={})
    assert str(caught.value).startswith("bad.yaml: ")
    assert expected in str(caught.value)


def test_idempotency_defaults_to_a_24_hour_window() -> None:
    idempotency = parse_config("{}", "empty.yaml", environ={}).server.idempotency
    assert (idempotency.enabled, idempotency.ttl_s, idempotency.max_key_chars) == (True, 86_400, 255)


def test_a_models_default_response_format() -> None:
    text = GOOD.replace("  - name: flux-schnell\n", "  - name: flux-schnell\n    default_response_format: b64_json\n")
    config = parse_config(text, "good.yaml", environ={"MEL_KEY": "k"})
    assert [model.default_response_format for model in config.models] == ["b64_json"]
    assert parse_config(GOOD, "good.yaml", environ={"MEL_KEY": "k"}).models[0].default_response_format is None


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


def test_every_error_is_reported_with_its_full_path() -> None:
    """One run names every problem, each at its full path: dict keys and list indexes included."""
    text = """
server: {port: abc}
redis: {on_failure: sometimes}
providers:
  pomelo-flux: {kind: pomelo, endpoint: flux, base_url: 'ftp://x'}
  mel: {kind: melious, base_url: 'http://x', timeout: {read: 0}}
models:
  - {name: a, targets: [{provider: mel, model: m}]}
  - {name: b, targets: [{provider: mel, model: m, max_n: 0}]}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml", environ={})
    errors = caught.value.errors
    assert all(error.startswith("bad.yaml: ") for error in errors)
    paths = [error.rsplit(" - at ", 1)[1] for error in errors]
    assert paths == [
        "`$.server.port`",
        "`$.redis.on_failure`",
        "`$.providers.pomelo-flux.base_url`",
        "`$.providers.mel.timeout.read`",
        "`$.models[1].targets[0].max_n`",
    ]
    assert "base_url must be an http:// or https:// URL" in errors[2]


def test_references_name_the_target_that_is_wrong() -> None:
    text = """
providers: {mel: {kind: melious, base_url: 'http://x'}}
models:
  - {name: a, targets: [{provider: mel, model: m}]}
  - {name: b, targets: [{provider: mel, model: m}, {provider: nope, model: m}]}
  - {name: c, aliases: [a], targets: [{provider: gone, model: m}]}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "refs.yaml", environ={})
    text_of = str(caught.value)
    where = "- at `$.models[1].targets[1].provider`"
    assert f"provider 'nope', which is not under `providers` (there: 'mel') {where}" in text_of
    assert "'a' is used twice - at `$.models[2]`" in text_of
    assert "- at `$.models[2].targets[0].provider`" in text_of
    assert len(caught.value.errors) == 3


def test_every_missing_environment_variable_is_named() -> None:
    text = "providers: {mel: {kind: melious, base_url: '${MEL_URL}', api_key: '${MEL_KEY}'}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "env.yaml", environ={})
    assert [error.split(": ", 1)[1] for error in caught.value.errors] == [
        "environment variable MEL_URL is not set (needed at `$.providers.mel.base_url`)",
        "environment variable MEL_KEY is not set (needed at `$.providers.mel.api_key`)",
    ]


def test_check_config_prints_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: abc}\nproviders: {p: {kind: melious, base_url: 'ftp://x'}}\nmodels: []\n")
    assert main(["check-config", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert "`$.server.port`" in lines[0] and "`$.providers.p.base_url`" in lines[1]


@pytest.mark.parametrize("text", ["", "providers: {}\nmodels: []\n", "server: {port: 8080}\n"])
def test_a_config_without_models_is_refused(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With no models every request would be model_not_found: check-config and serve both refuse it."""
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    assert main(["check-config", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no models under `models`" in err and str(empty) in err
    assert main(["serve", "--config", str(empty), "--port", "0"]) == 1
    assert "no models under `models`" in capsys.readouterr().err


def test_top_level_help_lists_every_command_in_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text
    for command in ("serve", "hash-key", "check-config", "store-setup"):
        assert f"\n  {command} " in text, command


@pytest.mark.parametrize(
    ("argv", "stdin"), [(["hash-key", ""], ""), (["hash-key", "-"], "\n"), (["hash-key", " "], "")]
)
def test_hash_key_refuses_an_empty_key(
    argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "empty" in captured.err


def test_listen_address_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """--host/--port when given, else $PORT for the port, else the config's server.host and server.port."""
    config = parse_config("server: {host: 0.0.0.0, port: 9123}\n")
    parser = build_parser()
    monkeypatch.delenv("PORT", raising=False)
    assert listen_address(parser.parse_args(["serve"]), config) == ("0.0.0.0", 9123)
    monkeypatch.setenv("PORT", "9200")
    assert listen_address(parser.parse_args(["serve"]), config) == ("0.0.0.0", 9200)
    assert listen_address(parser.parse_args(["serve", "--host", "::1", "--port", "9300"]), config) == ("::1", 9300)


def test_a_worker_config_passes_check_config_but_not_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A GPU worker's config has local models and no `models`: fine for `worker`, refused by `serve`."""
    worker = tmp_path / "worker.yaml"
    worker.write_text("providers: {local: {kind: local, models: {tiny: {path: 'builtin:tiny-sd'}}}}\n")
    assert main(["check-config", str(worker)]) == 0
    assert "ok (1 local models for `image-gateway-worker`" in capsys.readouterr().out
    assert main(["serve", "--config", str(worker), "--port", "0"]) == 1
    assert "no models under `models`" in capsys.readouterr().err


def test_one_run_reports_every_problem_even_several_in_one_part() -> None:
    """A config broken in many places at once: one run names every field, and each bad choice its allowed values.

    (msgspec stops at a struct's first error: several in one provider, a bad `kind` beside a broken model and a
    reference to a provider that is not there used to take one run each.)
    """
    text = """
server: {port: abc, upstream_transport: carrier-pigeon, max_body_bytes: 0}
providers:
  mel: {kind: melious, base_url: 'http://x', api_key: 7, timeout: {read: 0, total: -1}, bogus: 1}
  odd: {kind: openia, base_url: 'http://x'}
  pom: {kind: pomelo, endpoint: sdxl, base_url: 'http://x'}
models:
  - {name: a, targets: [{provider: mel, model: m, max_n: 0, operations: [paint]}]}
  - {name: b, targets: [{provider: nope, model: m}]}
  - {targets: []}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "many.yaml", environ={})
    errors = caught.value.errors
    paths = [error.rsplit(" - at ", 1)[1] for error in errors]
    for path in (
        "`$.server.port`",
        "`$.server.upstream_transport`",
        "`$.server.max_body_bytes`",
        "`$.providers.mel`",  # the unknown field `bogus`
        "`$.providers.mel.api_key`",
        "`$.providers.mel.timeout.read`",
        "`$.providers.mel.timeout.total`",
        "`$.providers.odd.kind`",
        "`$.providers.pom.endpoint`",
        "`$.models[0].targets[0].max_n`",
        "`$.models[0].targets[0].operations[0]`",
        "`$.models[1].targets[0].provider`",
        "`$.models[2]`",  # no name
        "`$.models[2].targets`",  # empty
    ):
        assert path in paths, f"{path} not reported in one run: {errors}"
    text_of = "\n".join(errors)
    assert "unknown field `bogus`" in text_of
    assert "one of: 'melious', 'nebul', 'pomelo', 'nebulablock', 'openai', 'local'" in text_of
    assert "(one of: 'midjourney', 'flux')" in text_of
    assert "missing required field `name`" in text_of
    assert "(there: 'mel', 'odd', 'pom')" in text_of
    assert "'paint' (one of: 'generate', 'edit', 'variation')" in text_of
