"""API keys and the one rule of who may call what, for every front end.

Clients send `Bearer <key>` (gRPC metadata `authorization`, HTTP header `Authorization`). Inference
keys may call everything but the calls that change what the server serves or maps: repository
load and unload, shared-memory register and unregister; admin keys may call everything. Keys are
compared as SHA-256 digests in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from service.errors import PermissionDenied, StartupError, Unauthenticated
from service.settings import ServerSettings

_BEARER = "bearer "


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _read_keys(setting: str, path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        text = path.read_text()
    except OSError as exc:
        raise StartupError(f"{setting} {path}: {exc.strerror}") from exc
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


class ApiKeys:
    def __init__(self, inference: list[str], admin: list[str]):
        self._inference = [_digest(k) for k in inference]
        self._admin = [_digest(k) for k in admin]

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ApiKeys:
        return cls(
            [k.get_secret_value() for k in settings.api_keys]
            + _read_keys("api_keys_file", settings.api_keys_file),
            [k.get_secret_value() for k in settings.admin_keys]
            + _read_keys("admin_keys_file", settings.admin_keys_file),
        )

    @property
    def enabled(self) -> bool:
        return bool(self._inference or self._admin)

    @staticmethod
    def _match(digest: bytes, keys: list[bytes]) -> bool:
        # Compare against every key so timing says nothing about which (if any) matched.
        found = False
        for key in keys:
            found |= hmac.compare_digest(digest, key)
        return found

    def role(self, presented: str) -> str | None:
        digest = _digest(presented)
        if self._match(digest, self._admin):
            return "admin"
        if self._match(digest, self._inference):
            return "inference"
        return None

    def authorize(self, credential: str | None, call: str, needs_admin: bool,
                  carrier: str) -> None:
        """Let the call through, or raise Unauthenticated / PermissionDenied. `credential` is the
        authorization value sent (None: none); `carrier` names where it goes in this protocol,
        e.g. "metadata 'authorization" or "header 'Authorization"."""
        if credential is None:
            raise Unauthenticated(f"missing API key: send {carrier}: Bearer <key>'")
        if not credential.lower().startswith(_BEARER):
            raise Unauthenticated(f"{carrier}' must be 'Bearer <key>'")
        role = self.role(credential[len(_BEARER):].strip())
        if role is None:
            raise Unauthenticated("invalid API key")
        if needs_admin and role != "admin":
            raise PermissionDenied(f"{call} needs an admin key; this key may only run inference")
