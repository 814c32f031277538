"""Model name and version: options, then the model card, then the file itself."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from onnxfleet.worker.settings import SettingsError, default_container_name, model_identity
from tests.worker.worker_support import DIGITS


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return Path(shutil.copy(DIGITS, tmp_path / "digits.onnx"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_without_card(model: Path) -> None:
    assert model_identity(model) == ("digits", sha(model)[:12], sha(model))


def test_card_gives_name_and_version(model: Path) -> None:
    shutil.copy(DIGITS.with_suffix(".json"), model.with_suffix(".json"))
    assert model_identity(model) == ("digits", "1", sha(model))
    other = Path(shutil.copy(model, model.with_name("other.onnx")))  # its card would be other.json
    assert model_identity(other) == ("other", sha(other)[:12], sha(other))


def test_options_win(model: Path) -> None:
    shutil.copy(DIGITS.with_suffix(".json"), model.with_suffix(".json"))
    assert model_identity(model, "mnist", "7")[:2] == ("mnist", "7")


def test_stale_card_is_refused_unless_the_version_is_given(model: Path) -> None:
    card = json.loads(DIGITS.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**card, "sha256": "f" * 64}))
    with pytest.raises(SettingsError, match="update the card or pass --model-version"):
        model_identity(model)
    assert model_identity(model, version="2")[:2] == ("digits", "2")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_unreadable_card(model: Path, content: str) -> None:
    model.with_suffix(".json").write_text(content)
    with pytest.raises(SettingsError, match="model card"):
        model_identity(model)


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        model_identity(tmp_path / "none.onnx")


def test_container_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXFLEET_CONTAINER_NAME", "worker-3/1")
    assert default_container_name() == "worker-3/1"
    monkeypatch.delenv("ONNXFLEET_CONTAINER_NAME")
    assert default_container_name()  # the hostname
