"""``image-gateway store-setup``: the bucket's lifecycle rule that removes expired images.

The gateway never deletes objects: URLs stop working at the TTL (presigned URLs expire,
gateway URLs carry a signed expiry), and the bucket's own lifecycle rule removes the objects
under ``image_store.prefix`` after the TTL rounded up to whole days (S3's unit). The rule is
put with botocore when it is installed and the credentials may; otherwise the command prints
what to apply and how.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.config import S3StoreConfig

__all__ = ["RULE_ID", "apply_lifecycle", "lifecycle_rule", "manual_steps"]

RULE_ID = "image-gateway-expire-images"


def expiry_days(config: S3StoreConfig) -> int:
    return max(1, math.ceil(config.ttl_seconds / 86400))


def lifecycle_rule(config: S3StoreConfig) -> dict[str, Any]:
    """The one rule: objects under the prefix expire a whole number of days after they were written."""
    return {
        "ID": RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": config.prefix},
        "Expiration": {"Days": expiry_days(config)},
    }


def manual_steps(config: S3StoreConfig) -> str:
    """What to apply by hand, for AWS, R2, MinIO and SeaweedFS."""
    document = json.dumps({"Rules": [lifecycle_rule(config)]}, indent=2)
    endpoint = f" --endpoint-url {config.endpoint_url}" if config.endpoint_url else ""
    days = expiry_days(config)
    return "\n".join(
        [
            f"Apply this lifecycle configuration to bucket {config.bucket!r} (saved as lifecycle.json):",
            document,
            "",
            f"AWS S3, R2 (S3 API), SeaweedFS: aws s3api put-bucket-lifecycle-configuration --bucket {config.bucket}"
            f"{endpoint} --lifecycle-configuration file://lifecycle.json",
            f"MinIO: mc ilm rule add --prefix {config.prefix!r} --expire-days {days} ALIAS/{config.bucket}",
            f"R2 dashboard: bucket ▸ Settings ▸ Object lifecycle rules: prefix {config.prefix!r}, {days} day(s)",
        ]
    )


def _client(config: S3StoreConfig) -> Any:
    import botocore.config
    import botocore.session

    session = botocore.session.get_session()
    options: dict[str, Any] = {"config": botocore.config.Config(signature_version="s3v4")}
    if config.endpoint_url:
        options["endpoint_url"] = config.endpoint_url
    if config.region:
        options["region_name"] = config.region
    if config.access_key_id:  # else botocore's own chain: the AWS environment, profiles, instance credentials
        options["aws_access_key_id"] = config.access_key_id
        options["aws_secret_access_key"] = config.secret_access_key
    return session.create_client("s3", **options)


def apply_lifecycle(config: S3StoreConfig) -> tuple[bool, str]:
    """Put the rule (keeping the bucket's other rules); (applied, what to tell the operator)."""
    try:
        import botocore.exceptions
    except ImportError:
        return False, "botocore is not installed (pip install botocore) to apply it here.\n" + manual_steps(config)
    client = _client(config)
    try:
        try:
            rules = client.get_bucket_lifecycle_configuration(Bucket=config.bucket)["Rules"]
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        rules = [rule for rule in rules if rule.get("ID") != RULE_ID] + [lifecycle_rule(config)]
        client.put_bucket_lifecycle_configuration(Bucket=config.bucket, LifecycleConfiguration={"Rules": rules})
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        return False, f"the storage refused ({code}); apply it with credentials that may:\n" + manual_steps(config)
    except botocore.exceptions.BotoCoreError as exc:
        return False, f"the storage could not be reached ({type(exc).__name__}):\n" + manual_steps(config)
    return True, (
        f"bucket {config.bucket!r}: objects under {config.prefix!r} now expire {expiry_days(config)} day(s) "
        f"after they are written (rule {RULE_ID})"
    )
