"""``check-config`` looks for each in-process local model's weights (gateway/config/weights.py), as loading would."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import try_to_load_from_cache

from gateway.cli import main
from gateway.config.weights import hub_cache, weights_problem

DEPLOY_WORKER = Path(__file__).resolve().parents[3] / "deploy" / "config" / "worker.yaml"


def cache_entry(cache: Path, repo_id: str, *, revision: str = "0123abcd", index: bool = True) -> None:
    """A model in a Hugging Face cache laid out as ``hf download`` leaves it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    if index:
        (snapshot / "model_index.json").write_text("{}")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    return path


def test_builtin_models_are_never_missing_and_unknown_ones_are() -> None:
    assert weights_problem("builtin:tiny-sd") is None and weights_problem("builtin:tiny-flux") is None
    problem = weights_problem("builtin:tiny-dalle")
    assert problem is not None and "builtin:tiny-sdxl" in problem


def test_a_directory_needs_a_diffusers_model(tmp_path: Path) -> None:
    assert weights_problem(str(tmp_path)) == f"{tmp_path} holds no diffusers model (no model_index.json)"
    (tmp_path / "model_index.json").write_text("{}")
    assert weights_problem(str(tmp_path)) is None
    assert weights_problem(str(tmp_path / "gone")) == f"no directory {tmp_path / 'gone'}"


def test_a_hub_id_is_there_when_its_cache_entry_is_as_huggingface_hub_reads_it(cache: Path) -> None:
    problem = weights_problem("stabilityai/sdxl-turbo")
    assert problem is not None and f"under {cache}" in problem and "`hf download stabilityai/sdxl-turbo`" in problem
    cache_entry(cache, "stabilityai/sdxl-turbo")
    assert weights_problem("stabilityai/sdxl-turbo") is None
    found = try_to_load_from_cache("stabilityai/sdxl-turbo", "model_index.json", cache_dir=cache)
    assert isinstance(found, str) and Path(found).is_file()  # the library agrees
    cache_entry(cache, "org/no-index", index=False)
    assert weights_problem("org/no-index") is not None
    assert try_to_load_from_cache("org/no-index", "model_index.json", cache_dir=cache) is None


def test_the_cache_is_found_from_the_environment_as_huggingface_hub_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert hub_cache() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", "/srv/cache")
    assert hub_cache() == Path("/srv/cache/huggingface/hub")
    monkeypatch.setenv("HF_HOME", "/models/huggingface")
    assert hub_cache() == Path("/models/huggingface/hub")
    monkeypatch.setenv("HF_HUB_CACHE", "/elsewhere")
    assert hub_cache() == Path("/elsewhere")


CONFIG = """
providers:
  gpu:
    kind: local
    models:
      tiny: {{path: "builtin:tiny-sd"}}
      sd-turbo: {{path: "{missing}"}}
      sdxl: {{path: stabilityai/sdxl-turbo}}
  remote: {{kind: local, workers: ["http://127.0.0.1:9"], models: {{elsewhere: {{path: /on/the/worker}}}}}}
models:
  - {{name: sd, targets: [{{provider: gpu, model: sd-turbo}}, {{provider: gpu, model: tiny}}]}}
"""


def test_check_config_names_each_local_model_without_weights_and_its_field(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "models" / "sd-turbo"
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(missing=missing))
    assert main(["check-config", "--no-store", str(config)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"config error: {config}: local model 'sd-turbo': no directory {missing}"
        " - at `$.providers.gpu.models.sd-turbo.path`",
        f"config error: {config}: local model 'sdxl': no directory {Path('stabilityai/sdxl-turbo').resolve()} and no"
        f" Hugging Face cache entry for 'stabilityai/sdxl-turbo' under {cache} (weights are never downloaded at"
        " run time: `hf download stabilityai/sdxl-turbo` fills the cache) - at `$.providers.gpu.models.sdxl.path`",
    ]  # the remote provider's models are its workers' to check
    missing.mkdir(parents=True)
    (missing / "model_index.json").write_text("{}")
    cache_entry(cache, "stabilityai/sdxl-turbo")
    assert main(["check-config", "--no-store", str(config)]) == 0, capsys.readouterr().err


def test_a_worker_config_is_checked_too_unless_told_not_to(
    cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped worker config names stabilityai/sdxl-turbo: a machine without it in the cache is told so."""
    monkeypatch.setenv("WORKER_TOKEN", "a-worker-token-of-the-deploy-files")  # the deploy config requires one
    assert main(["check-config", str(DEPLOY_WORKER)]) == 1
    assert "local model 'sdxl-turbo'" in capsys.readouterr().err
    assert main(["check-config", "--no-weights", str(DEPLOY_WORKER)]) == 0
    cache_entry(cache, "stabilityai/sdxl-turbo")
    assert main(["check-config", str(DEPLOY_WORKER)]) == 0, capsys.readouterr().err
