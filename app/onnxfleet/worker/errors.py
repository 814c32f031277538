"""The errors the worker answers with: each one knows its status and its JSON body."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer other than 200: ``{"error": error, "detail": detail, **extra}``."""

    status = 400

    def __init__(
        self,
        error: str,
        detail: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, **self.extra}


class InputError(ApiError):
    """Well-formed JSON that does not fit the model's signature (422)."""

    status = 422

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__("invalid input", detail, **extra)
