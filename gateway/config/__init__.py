"""The gateway's configuration: YAML with ``${ENV}`` values, checked by msgspec at start.

An error names the file and the field (``$.providers.mel.base_url``) so that a bad
config never gets as far as serving. The parts: ``fields`` (errors, units, prices),
``providers`` (and models), ``stores``, ``settings`` (the whole config and the checks
across its sections), ``load`` (YAML and ``${ENV}``); their public names are here.
"""

from gateway.config.fields import CONFIG_ENV, DEFAULT_CONFIG_PATH, BudgetConfig, ConfigError, PriceConfig
from gateway.config.load import load_config, parse_config
from gateway.config.providers import ModelConfig, OpenAIProvider, ProviderConfig, TargetConfig, provider_kind
from gateway.config.settings import (
    AdminKey,
    AuthConfig,
    ConsoleConfig,
    GatewayConfig,
    InboundKey,
    JobsConfig,
    KeyWebhooks,
    ServerConfig,
    WebhooksConfig,
    require_models,
)
from gateway.config.stores import DirectoryStoreConfig, ImageStoreConfig, S3StoreConfig

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AdminKey",
    "AuthConfig",
    "BudgetConfig",
    "ConfigError",
    "ConsoleConfig",
    "DirectoryStoreConfig",
    "GatewayConfig",
    "ImageStoreConfig",
    "InboundKey",
    "JobsConfig",
    "KeyWebhooks",
    "ModelConfig",
    "OpenAIProvider",
    "PriceConfig",
    "ProviderConfig",
    "S3StoreConfig",
    "ServerConfig",
    "TargetConfig",
    "WebhooksConfig",
    "load_config",
    "parse_config",
    "provider_kind",
    "require_models",
]
