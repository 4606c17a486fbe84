"""The S3 image store against a real SeaweedFS: its config, URLs, expiry, checks and lifecycle rule."""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.config import ConfigError, DirectoryStoreConfig, S3StoreConfig, parse_config
from gateway.images import StoreUnavailable, build_image_store
from gateway.images.s3 import S3ImageStore
from gateway.images.setup import RULE_ID, apply_lifecycle
from gateway.observability.logs import config_secrets
from tests.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
_buckets = itertools.count()


@pytest.fixture
def bucket(seaweedfs: SeaweedFS) -> str:
    """A new, empty bucket for each test."""
    return seaweedfs.create_bucket(f"igw-unit-{next(_buckets)}-{int(time.time())}")


def s3_config(seaweedfs: SeaweedFS, bucket: str, **overrides: Any) -> S3StoreConfig:
    return msgspec.convert(seaweedfs.store_config(bucket, **overrides), S3StoreConfig)


def store_section(text: str, environ: dict[str, str] | None = None) -> Any:
    return parse_config(text, "<test>", environ or {}).image_store


# === config ===


def test_an_image_store_without_kind_is_the_directory_store() -> None:
    store = store_section("image_store: {path: /tmp/x}")
    assert isinstance(store, DirectoryStoreConfig) and store.path == "/tmp/x"
    assert isinstance(parse_config("", "<test>", {}).image_store, DirectoryStoreConfig)


def test_s3_store_config_takes_credentials_from_the_environment() -> None:
    text = """
image_store:
  kind: s3
  bucket: images
  prefix: generated
  access_key_id: ${S3_KEY}
  secret_access_key: ${S3_SECRET}
"""
    store = store_section(text, {"S3_KEY": "k", "S3_SECRET": "s"})
    assert isinstance(store, S3StoreConfig)
    assert (store.access_key_id, store.secret_access_key, store.prefix) == ("k", "s", "generated/")
    assert store.url_mode == "presigned"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"kind": "s3", "bucket": "bkt", "url_mode": "gateway"}, "url_mode gateway needs image_store.secret"),
        ({"kind": "s3", "bucket": "bkt", "access_key_id": "k"}, "both access_key_id and secret_access_key"),
        ({"kind": "s3", "bucket": "bkt", "endpoint_url": "minio:9000"}, "endpoint_url must be an http"),
        ({"kind": "s3"}, "bucket"),
        ({"kind": "s3", "bucket": "bkt", "path": "/x"}, "unknown field `path`"),
        ({"kind": "gcs", "bucket": "bkt"}, "gcs"),
        ({"kind": "s3", "bucket": "bkt", "ttl_seconds": 8 * 86400}, "presigned URLs live 7 days at most"),
    ],
)
def test_bad_s3_store_configs_are_refused_with_the_field(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=r"at `\$\.image_store") as raised:
        store_section(yaml.safe_dump({"image_store": section}))
    assert expected in str(raised.value)


def test_the_bucket_keys_are_kept_out_of_logs() -> None:
    text = "image_store: {kind: s3, bucket: bkt, access_key_id: AKIAEXAMPLE, secret_access_key: s3-secret-value}"
    assert "s3-secret-value" in config_secrets(parse_config(text, "<test>", {}))


def test_the_store_the_config_names_is_built() -> None:
    assert isinstance(build_image_store(S3StoreConfig(bucket="some-bucket")), S3ImageStore)


# === the store against SeaweedFS ===


async def test_presigned_url_serves_the_image_from_the_bucket(seaweedfs: SeaweedFS, bucket: str) -> None:
    store = S3ImageStore(s3_config(seaweedfs, bucket))
    await store.check()
    name = await store.put(PNG, "image/png")
    url = store.url(name, "http://gateway.invalid")
    assert url.startswith(f"{seaweedfs.endpoint}/{bucket}/images/{name}?")
    assert "X-Amz-Expires=3600" in url and SECRET_KEY not in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == PNG
    assert fetched.headers["content-type"] == "image/png"
    assert await store.get(name) == (PNG, "image/png")
    keys = [item["Key"] for item in seaweedfs.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"images/{name}" in keys


async def test_gateway_mode_names_are_checked_before_the_bucket(seaweedfs: SeaweedFS, bucket: str) -> None:
    store = S3ImageStore(s3_config(seaweedfs, bucket, url_mode="gateway", secret="shared"))
    name = await store.put(PNG, "image/jpeg")
    assert store.url(name, "https://images.example.com") == f"https://images.example.com/images/{name}"
    other_replica = S3ImageStore(s3_config(seaweedfs, bucket, url_mode="gateway", secret="shared"))
    assert await other_replica.get(name) == (PNG, "image/jpeg")
    token, signature, ext = name.split(".")
    assert await store.get(f"{token}.{'0' * len(signature)}.{ext}") is None  # forged
    assert await S3ImageStore(s3_config(seaweedfs, bucket, url_mode="gateway", secret="other")).get(name) is None
    assert await store.get(store.names.new("image/png")) is None  # signed, never stored


async def test_credentials_from_the_standard_aws_environment(
    seaweedfs: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    store = S3ImageStore(s3_config(seaweedfs, bucket, access_key_id="", secret_access_key=""))
    name = await store.put(PNG)
    assert httpx.get(store.url(name, "")).content == PNG


async def test_expired_urls_are_refused(seaweedfs: SeaweedFS, bucket: str) -> None:
    presigned = S3ImageStore(s3_config(seaweedfs, bucket, ttl_seconds=2))
    gateway = S3ImageStore(s3_config(seaweedfs, bucket, ttl_seconds=2, url_mode="gateway", secret="s"))
    url = presigned.url(await presigned.put(PNG), "")
    name = await gateway.put(PNG)
    assert httpx.get(url).status_code == 200
    time.sleep(3.1)  # past both expiries (whole seconds)
    refused = httpx.get(url)
    assert refused.status_code == 403 and b"expired" in refused.content.lower()
    assert await gateway.get(name) is None


async def test_missing_bucket_or_refused_credentials_say_so(seaweedfs: SeaweedFS, bucket: str) -> None:
    with pytest.raises(StoreUnavailable, match=r"bucket 'igw-no-such-bucket' at http://\S+ does not exist"):
        await S3ImageStore(s3_config(seaweedfs, "igw-no-such-bucket")).check()
    with pytest.raises(StoreUnavailable, match="refused the credentials") as refused:
        await S3ImageStore(s3_config(seaweedfs, bucket, secret_access_key="wrong-secret-123")).check()
    assert "wrong-secret-123" not in str(refused.value)
    with pytest.raises(StoreUnavailable, match="refused the credentials"):
        await S3ImageStore(s3_config(seaweedfs, bucket, secret_access_key="wrong-secret-123")).put(PNG)


def test_check_config_reaches_the_bucket(
    seaweedfs: SeaweedFS, bucket: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    def check(store: dict[str, Any]) -> int:
        config = tmp_path / "gateway.yaml"
        models = [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}]
        providers = {"p": {"kind": "melious", "base_url": "http://127.0.0.1:9"}}
        config.write_text(yaml.safe_dump({"image_store": store, "providers": providers, "models": models}))
        return cli_main(["check-config", str(config)])

    assert check(seaweedfs.store_config(bucket)) == 0
    assert check(seaweedfs.store_config("igw-no-such-bucket")) == 1
    assert "bucket 'igw-no-such-bucket'" in capsys.readouterr().err
    assert check(seaweedfs.store_config(bucket, secret_access_key="wrong-secret-123")) == 1
    err = capsys.readouterr().err
    assert "refused the credentials" in err and "wrong-secret-123" not in err


# === the lifecycle rule ===


def test_store_setup_puts_the_lifecycle_rule_and_keeps_the_others(seaweedfs: SeaweedFS, bucket: str) -> None:
    client = seaweedfs.client()
    other = {"ID": "keep-me", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})
    config = s3_config(seaweedfs, bucket, ttl_seconds=90_000, prefix="gen/")
    applied, message = apply_lifecycle(config)
    assert applied, message
    applied, _ = apply_lifecycle(config)  # twice: still one rule of ours
    rules = {rule["ID"]: rule for rule in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(rules) == {"keep-me", RULE_ID}
    assert rules[RULE_ID]["Expiration"] == {"Days": 2}  # 25 hours, rounded up to whole days
    assert rules[RULE_ID]["Filter"] == {"Prefix": "gen/"}


def test_store_setup_prints_what_to_apply_when_the_credentials_may_not(
    seaweedfs: SeaweedFS, bucket: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    store = seaweedfs.store_config(bucket, secret_access_key="wrong-secret-123")
    config.write_text(yaml.safe_dump({"image_store": store}))
    assert cli_main(["store-setup", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "the storage refused" in err and "put-bucket-lifecycle-configuration" in err and "mc ilm rule add" in err
    assert '"Prefix": "images/"' in err and "wrong-secret-123" not in err
    assert cli_main(["store-setup", "--print", "--config", str(config)]) == 0
    assert f"--bucket {bucket}" in capsys.readouterr().out
