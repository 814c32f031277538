"""Client tokens: ``Authorization: Bearer <token>`` checked against hashes, never stored raw.

The ``--api-tokens-file`` holds one token per line as ``<name> sha256:<64 hex digits of
the token's SHA-256>``; blank lines and ``#`` comments are ignored. It is re-read by
``POST /admin/reload``, so tokens are added and revoked without a restart. A raw token in
``$ONNXFLEET_API_TOKEN`` also works (development). No token at all: the API is open.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

_LINE = re.compile(r"(\S+)\s+sha256:([0-9a-f]{64})")


class TokensError(ValueError):
    """The tokens file is unreadable or invalid (the message says where and why)."""


def digest(token: str | bytes) -> str:
    """``sha256:<hex>`` of a token, as the tokens file holds it."""
    raw = token.encode() if isinstance(token, str) else token
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def load_tokens(path: str | Path) -> dict[bytes, str]:
    """SHA-256 digest → name, from a tokens file (raises TokensError)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensError(
            f"{path}: cannot read the tokens file: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    tokens: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise TokensError(f"{path}:{number}: expected '<name> sha256:<64 hex digits>'")
        tokens[bytes.fromhex(match[2])] = match[1]
    return tokens


class Tokens:
    """Who may call: hashed tokens from the file, plus an optional raw token."""

    def __init__(self, hashed: dict[bytes, str] | None = None, raw: str | None = None) -> None:
        self.hashed = hashed or {}
        self.raw_token = raw
        self.raw = f"Bearer {raw}".encode() if raw else None

    @property
    def open(self) -> bool:
        return not self.hashed and self.raw is None

    def check(self, authorization: bytes | None) -> str | None:
        """The name of the caller's token, or None when it is missing or unknown."""
        if authorization is None:
            return None
        if self.raw is not None and hmac.compare_digest(authorization, self.raw):
            return "env"
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        return self.hashed.get(hashlib.sha256(token.strip()).digest())
