"""The worker's refusals: each knows its status, its ``code`` and its JSON envelope
(``{"error": message, "code": code, ...}``, docs/design.md)."""

from __future__ import annotations

from typing import Any

from onnxfleet.oip.errors import CodecError


class ApiError(CodecError):
    def __init__(
        self, message: str, code: str, status: int, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message, **extra)
        self.code = code
        self.status = status
        self.headers = headers or {}
