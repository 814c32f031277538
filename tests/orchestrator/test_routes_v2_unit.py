"""The routing table, version 2: models, each refusal naming the file, the field and what was expected."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from onnxfleet.orchestrator.routes import RoutesError, load_table, parse_table

SIGNATURE = {
    "batch": True,
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
}


def table() -> dict[str, Any]:
    return {
        "health": {"path": "/readyz", "interval_s": 1, "timeout_s": 1, "fall": 2, "rise": 2},
        "queue": {"max_length": 1000, "timeout_s": 30},
        "models": [
            {
                "name": "digits",
                "containers": [
                    {
                        "name": "worker-1/0",
                        "url": "http://10.0.0.2:5000",
                        "node": "worker-1",
                        "max_concurrency": 1,
                    }
                ],
                "queue": {"max_length": 200, "timeout_s": 5},
                "signature": SIGNATURE,
                "batching": {"max_batch_size": 32, "max_delay_ms": 0},
            },
            {
                "name": "iris",
                "default": True,
                "containers": [
                    {"name": "worker-1/iris/0", "url": "http://10.0.0.2:5002", "node": "worker-1"}
                ],
            },
        ],
    }


def test_a_version_2_table_gives_each_model_its_containers_queue_and_batching() -> None:
    parsed = parse_table(table())
    assert [m.name for m in parsed.models] == ["iris", "digits"]  # the default first
    assert parsed.default == "iris"
    iris, digits = parsed.models
    assert [c.name for c in digits.containers] == ["worker-1/0"]
    assert (digits.queue.max_length, digits.queue.timeout_s) == (200, 5.0)
    assert (iris.queue.max_length, iris.queue.timeout_s) == (1000, 30.0)  # the top-level queue
    assert digits.model is not None
    assert digits.model.name == "digits"
    assert digits.model.signature.batch
    assert digits.batching is not None
    assert digits.batching.max_batch_size == 32
    assert iris.model is None
    assert iris.batching is None
    assert all(m.by_name for m in parsed.models)
    assert [c.name for c in parsed.containers] == ["worker-1/iris/0", "worker-1/0"]
    assert parsed.routes() == parsed.models


def test_without_a_default_the_first_model_is_the_default() -> None:
    raw = table()
    del raw["models"][1]["default"]
    parsed = parse_table(raw)
    assert parsed.default == "digits"
    assert parsed.models[0].name == "digits"


def test_a_version_1_table_is_one_model_forwarded_whatever_it_names() -> None:
    parsed = parse_table({"containers": [{"name": "a", "url": "http://h:1", "node": "n"}]})
    (only,) = parsed.models
    assert (only.name, only.by_name, parsed.default) == ("", False, "")
    assert only.containers == parsed.containers
    named = parse_table(
        {"containers": [], "model": {"name": "digits", **SIGNATURE}, "batching": {"max_batch_size": 4}}
    )
    assert (named.models[0].name, named.models[0].by_name) == ("digits", False)
    assert named.models[0].batching is not None
    assert named.models[0].batching.max_batch_size == 4
    # two containers of one model may share an address (a rename under way)
    parse_table({"containers": [{"name": n, "url": "http://h:1", "node": "n"} for n in ("a", "b")]})


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    here: Any = raw
    for key in head:
        here = here[int(key)] if key.isdigit() else here[key]
    if value is _DELETE:
        del here[int(last) if last.isdigit() else last]
    elif last.isdigit():
        here[int(last)] = value
    else:
        here[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("models", [], "models: expected a non-empty list of models"),
        ("models", {}, "models: expected a non-empty list of models"),
        ("models.0", "digits", "models[0]: expected a JSON object, got str"),
        ("models.0.weight", 2, "models[0]: unknown field(s) ['weight']"),
        ("models.0.name", _DELETE, "models[0]: missing required field 'name'"),
        ("models.0.containers", _DELETE, "models[0]: missing required field 'containers'"),
        ("models.0.name", "", "models[0].name: expected a model name of 1 to 64 letters"),
        ("models.0.name", "-x", "models[0].name: expected a model name"),
        ("models.0.name", "a/b", "models[0].name: expected a model name"),
        ("models.0.name", "x" * 65, "models[0].name: expected a model name"),
        ("models.0.name", 7, "models[0].name: expected a model name"),
        ("models.1.name", "digits", "models[1].name: duplicate model name 'digits'"),
        ("models.0.default", "yes", "models[0].default: expected true or false, got 'yes'"),
        ("models.0.default", True, "models[1].default: 'digits' is the default model already"),
        ("models.0.containers", {}, "models[0].containers: expected a list of containers"),
        ("models.0.containers.0.url", "http://h:1/x", "models[0].containers[0].url"),
        (
            "models.1.containers.0.name",
            "worker-1/0",
            "models[1].containers: duplicate name 'worker-1/0'",
        ),
        (
            "models.1.containers.0.url",
            "http://10.0.0.2:5000",
            "models[1].containers[0].url: 'http://10.0.0.2:5000' is a container of model 'digits' too",
        ),
        ("models.0.queue.max_length", -1, "models[0].queue.max_length: expected an integer >= 0"),
        ("models.0.queue.depth", 1, "models[0].queue: unknown field(s) ['depth']"),
        ("models.0.signature.name", "digits", "models[0].signature: unknown field(s) ['name']"),
        ("models.0.signature.inputs", _DELETE, "models[0].signature: missing required field 'inputs'"),
        ("models.0.signature.batch", 1, "models[0].signature.batch: expected true or false"),
        (
            "models.0.signature.inputs.0.shape",
            [1, 64],
            "models[0].signature.inputs[0].shape: a model with batch: true has a first dimension -1",
        ),
        ("models.0.batching.max_delay_ms", 5000, "models[0].batching.max_delay_ms: expected milliseconds"),
        ("models.0.signature", _DELETE, "models[0].batching: needs the model's signature"),
        ("containers", [], "['containers'] beside 'models': expected either 'models'"),
        ("model", {"name": "x"}, "['model'] beside 'models'"),
    ],
)
def test_every_bad_model_entry_is_refused_naming_the_file_and_field(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    raw = copy.deepcopy(table())
    _set(raw, path, value)
    file = tmp_path / "routes.json"
    file.write_text(json.dumps(raw))
    with pytest.raises(RoutesError) as err:
        load_table(file)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{file}: ")


def test_neither_containers_nor_models_says_what_is_expected() -> None:
    with pytest.raises(RoutesError, match="expected a 'containers' list \\(one model\\) or a 'models' list"):
        parse_table({"queue": {}})
