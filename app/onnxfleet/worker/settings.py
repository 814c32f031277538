"""What a worker serves and how: resolved once, before gunicorn starts."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SettingsError(Exception):
    """The worker cannot start with these options; the message says why."""


@dataclass(frozen=True)
class WorkerSettings:
    model_path: Path
    model_name: str
    model_version: str
    model_sha256: str
    container: str
    intra_op_threads: int
    max_concurrency: int
    max_waiting: int
    max_body_bytes: int
    read_timeout: float = 30.0  # seconds a request body may stall
    batch: bool = False  # the card's "batch": the first dimension is a batch of rows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(model_path: Path) -> dict[str, Any] | None:
    """The model card ``<stem>.json`` next to the model, if there is one."""
    card_path = model_path.with_suffix(".json")
    if not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"model card {card_path} is unreadable: {exc}") from exc
    if not isinstance(card, dict):
        raise SettingsError(f"model card {card_path} is not a JSON object")
    return card


def model_identity(
    model_path: Path, name: str | None = None, version: str | None = None
) -> tuple[str, str, str]:
    """(name, version, sha256) of the model: the options first, then the card's
    ``name``/``version``, else the file stem and the first 12 hex of the sha256.

    A card whose ``sha256`` does not match the file describes another model: rather than
    label every answer with a wrong version, refuse (unless the version is given)."""
    if not model_path.is_file():
        raise SettingsError(f"model file {model_path} does not exist (--model)")
    if not os.access(model_path, os.R_OK):
        raise SettingsError(f"model file {model_path} is not readable by uid {os.getuid()}")
    sha256 = file_sha256(model_path)
    card = read_card(model_path) or {}
    card_sha = card.get("sha256")
    if version is None and card_sha is not None and card_sha != sha256:
        raise SettingsError(
            f"model card {model_path.with_suffix('.json')} is for sha256 {card_sha}, but "
            f"{model_path} has sha256 {sha256}: update the card or pass --model-version"
        )
    name = name or str(card.get("name") or model_path.stem)
    version = version or str(card.get("version") or sha256[:12])
    return name, version, sha256


def card_batch(model_path: Path) -> bool:
    """The card's ``batch`` (false when absent): whether the first dimension of every
    input and output is a batch of independent rows, so that requests may be merged."""
    card = read_card(model_path) or {}
    batch = card.get("batch", False)
    if type(batch) is not bool:
        raise SettingsError(f'model card {model_path.with_suffix(".json")}: "batch" must be true or false')
    return batch


def default_container_name() -> str:
    return os.environ.get("ONNXFLEET_CONTAINER_NAME") or socket.gethostname()
