"""Inbound API keys: stored as SHA-256 hashes, compared in constant time.

A client sends ``Authorization: Bearer <key>`` (what the openai SDK sends) or
``X-API-Key: <key>``. With no keys configured the gateway is open.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from gateway.config import AuthConfig, InboundKey
from schemas.canonical import ErrorCode, GatewayError

__all__ = ["Authenticator", "hash_key"]


def hash_key(key: str) -> str:
    """The form a key is stored in the config: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    """Finds the configured key a request presents, or refuses it."""

    def __init__(self, config: AuthConfig) -> None:
        self._keys = [(bytes.fromhex(key.hash.removeprefix("sha256:")), key) for key in config.keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def authenticate(self, headers: Mapping[str, str]) -> InboundKey | None:
        """The caller's key (None when the gateway is open); a 401 ``GatewayError`` otherwise."""
        if self.open:
            return None
        presented = self._presented(headers)
        digest = hashlib.sha256(presented.encode()).digest()
        found: InboundKey | None = None
        for stored, key in self._keys:  # every key is compared, so timing says nothing about which matched
            if hmac.compare_digest(stored, digest):
                found = key
        if found is None:
            raise _unauthorized("invalid API key")
        if found.revoked:
            raise _unauthorized("this API key has been revoked")
        return found

    @staticmethod
    def _presented(headers: Mapping[str, str]) -> str:
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("malformed Authorization header: expected `Bearer <key>`")
            return token.strip()
        api_key = headers.get("x-api-key")
        if api_key:
            return api_key.strip()
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
