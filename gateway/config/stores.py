"""The image store: a directory, or an S3-compatible bucket."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from gateway.config.fields import MAX_PRESIGNED_TTL_S, FieldValueError, PositiveInt, Seconds


class _StoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """What every image store has: how long an image lives, and where clients reach this gateway."""

    ttl_seconds: PositiveInt = 3600
    # Signs image names; replicas that share a store must share it. Empty: random per process.
    secret: str = ""
    # The URL prefix clients reach this gateway at; empty: taken from each request.
    public_base_url: str = ""
    # How often each process checks the store in the background (image_gateway_image_store_ready, /ready's
    # image_store check); /ready reads the last result and never waits on the store.
    probe_interval_s: Seconds = 5.0


class DirectoryStoreConfig(_StoreConfig, tag="directory"):
    """Images as files in a directory (replicas share it over a ReadWriteMany volume)."""

    path: str = "var/images"


class S3StoreConfig(_StoreConfig, tag="s3"):
    """Images in an S3-compatible bucket (AWS S3, R2, MinIO, SeaweedFS, GCS's XML API).

    Credentials: ``access_key_id``/``secret_access_key`` (write them as ``${ENV}``), else the
    standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, web identity) and instance credentials.
    """

    bucket: Annotated[str, msgspec.Meta(min_length=3)]
    prefix: str = "images/"
    endpoint_url: str = ""  # empty: AWS S3 in ``region``
    region: str = ""  # empty: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    access_key_id: str = ""
    secret_access_key: str = ""
    # presigned: clients get a presigned GET URL of the bucket, expiring with ttl_seconds (no gateway bandwidth);
    # gateway: clients get this gateway's signed URL, and any replica serves it from the bucket.
    url_mode: Literal["presigned", "gateway"] = "presigned"
    timeout_s: Seconds = 10.0  # per storage call; an unreachable store fails URL answers after this, not later

    def __post_init__(self) -> None:
        if self.endpoint_url and not re.match(r"^https?://[^/\s]+", self.endpoint_url):
            raise FieldValueError("endpoint_url", "endpoint_url must be an http:// or https:// URL")
        if self.url_mode == "presigned" and self.ttl_seconds > MAX_PRESIGNED_TTL_S:
            raise FieldValueError("ttl_seconds", "presigned URLs live 7 days at most (604800 s)")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise FieldValueError("secret_access_key", "give both access_key_id and secret_access_key, or neither")
        if self.url_mode == "gateway" and not self.secret:
            raise FieldValueError(
                "secret", "url_mode gateway needs image_store.secret: every replica signs and checks image URLs with it"
            )
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.prefix = self.prefix.lstrip("/")


# `kind` picks the store; without one, the directory store (configs written before the S3 store).
ImageStoreConfig = DirectoryStoreConfig | S3StoreConfig
