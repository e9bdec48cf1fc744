"""Merchant tokens: signed, expiring, carrying the merchant id; and the admin token.

A merchant token is ``mt_<payload>.<signature>``: the payload is base64url JSON
``{"m": merchant_id, "exp": unix seconds}`` and the signature its HMAC-SHA256 under the API's
secret key. The platform's backend gets tokens from ``POST /v1/admin/tokens`` (admin token)
or ``mercato tokens issue --merchant M``; the secret key and admin token live in the data
directory (created on first use, readable by the owner only) unless the configuration sets
them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from mercato.query.errors import TokenError

PREFIX = "mt_"


class _Claims(msgspec.Struct):
    m: str
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create(path: Path, make: int = 32) -> str:
    """The secret in ``path``, created (owner-only) with ``make`` random bytes if missing."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(make)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


class TokenSigner:
    """Issues and verifies merchant tokens with one secret key."""

    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode()
        self._clock = clock

    def issue(self, merchant_id: str, ttl_seconds: int) -> tuple[str, int]:
        """A token for ``merchant_id`` and its expiry (unix seconds)."""
        if not merchant_id:
            raise TokenError("a token needs a merchant id")
        expires = int(self._clock()) + ttl_seconds
        payload = _b64(msgspec.json.encode(_Claims(merchant_id, expires)))
        return f"{PREFIX}{payload}.{self._sign(payload)}", expires

    def verify(self, token: str) -> str:
        """The merchant id of a valid, unexpired token; TokenError otherwise."""
        if not token.startswith(PREFIX) or token.count(".") != 1:
            raise TokenError("not a merchant token")
        payload, signature = token[len(PREFIX) :].split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenError("invalid token signature")
        try:
            claims = msgspec.json.decode(_unb64(payload), type=_Claims)
        except (ValueError, msgspec.DecodeError):
            raise TokenError("malformed token") from None
        if claims.exp <= self._clock():
            raise TokenError("token expired")
        return claims.m

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
