"""The codec's refusals, and the error envelope every onnxfleet service answers with.

``{"error": "<what was wrong, what was expected>", "code": "<snake_case>", ...}``:
``error`` is the human message (what OIP clients such as tritonclient read), ``code`` the
machine-readable kind.
"""

from __future__ import annotations

from typing import Any


def envelope(message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "code": code, **extra}


class CodecError(Exception):
    """A body the codec cannot take: 400 ``bad_request`` (it does not parse or its framing
    is wrong) unless a subclass says otherwise."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return envelope(self.message, self.code, **self.extra)


class InvalidInput(CodecError):
    """A well-formed body whose tensors do not fit the model (422 ``invalid_input``)."""

    status = 422
    code = "invalid_input"


class UnsupportedMediaType(CodecError):
    status = 415
    code = "unsupported_media_type"
