"""Stock OIP clients against a real worker, used as their users write them:
tritonclient.http with its defaults (binary tensors, no Content-Type) and with JSON
(``binary_data=False``), and KServe's ``InferenceRESTClient`` (binary and JSON, with the
Content-Types it sends), on the demo model and on a model with FP32, INT64, BOOL and
BYTES inputs. Answers are compared with onnxruntime called in-process.

KServe's SDK runs in its own venv (``.cache/clients/kserve``, pinned by
``kserve-client.txt``, created on first use): its dependencies (protobuf < 7, kubernetes,
grpcio-tools...) conflict with the controller's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from tests.support import ROOT, Service
from tests.worker.worker_support import DIGITS, pinned_venv

SAMPLES = load_digits().data[:5].astype(np.float32)
MULTI = {
    "a": np.array([[0.5, 1.5, 2.5], [-1, 0, 1e30]], np.float32),
    "b": np.array([[1, 2, 3], [2**40, -5, 0]], np.int64),
    "flags": np.array([True, False, True]),
    "tag": np.array(["x", "ünï", ""], dtype=object),
}
HERE = Path(__file__).parent
KSERVE_VENV = ROOT / ".cache" / "clients" / "kserve"


def in_process(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def same(got: np.ndarray, want: np.ndarray) -> None:
    if want.dtype == object:
        got = np.array([v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)], object)
        want = want.reshape(-1)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def triton_client(digits_worker: Service) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{digits_worker.port}")
    yield client
    client.close()


def triton_inputs(feeds: dict[str, np.ndarray], binary_data: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in feeds.items():
        datatype = "BYTES" if array.dtype == object else triton.np_to_triton_dtype(array.dtype)
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary_data)
        inputs.append(tensor)
    return inputs


def test_tritonclient_metadata_and_health(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("digits")
    metadata = triton_client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["parameters"] == {"batch": True}
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]


def test_tritonclient_defaults(triton_client: triton.InferenceServerClient) -> None:
    """Binary input, no outputs named (so every output comes back binary), no Content-Type."""
    result = triton_client.infer("digits", triton_inputs({"input": SAMPLES}, True), request_id="t-1")
    want = in_process(DIGITS, {"input": SAMPLES})
    same(result.as_numpy("label"), want["label"])
    same(result.as_numpy("probabilities"), want["probabilities"])
    response = result.get_response()
    assert response["id"] == "t-1"
    assert {o["name"]: "binary_data_size" in o["parameters"] for o in response["outputs"]} == {
        "label": True,
        "probabilities": True,
    }


def test_tritonclient_json(triton_client: triton.InferenceServerClient) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = triton_client.infer("digits", triton_inputs({"input": SAMPLES}, False), outputs=outputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["probabilities"]
    assert "data" in response["outputs"][0]
    same(result.as_numpy("probabilities"), in_process(DIGITS, {"input": SAMPLES})["probabilities"])


def test_tritonclient_mixed_outputs(triton_client: triton.InferenceServerClient) -> None:
    outputs = [
        triton.InferRequestedOutput("label", binary_data=True),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = triton_client.infer("digits", triton_inputs({"input": SAMPLES}, True), outputs=outputs)
    want = in_process(DIGITS, {"input": SAMPLES})
    same(result.as_numpy("label"), want["label"])
    same(result.as_numpy("probabilities"), want["probabilities"])


@pytest.mark.parametrize("binary_data", [True, False])
def test_tritonclient_every_datatype_of_a_model(multi_worker: Service, binary_data: bool) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{multi_worker.port}")
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary_data) for n in ("sum", "inverted", "tag_out")
    ]
    result = client.infer("multi", triton_inputs(MULTI, binary_data), outputs=outputs)
    for name, array in in_process(multi_worker_model(multi_worker), MULTI).items():
        same(result.as_numpy(name), array)


def multi_worker_model(worker: Service) -> Path:
    return Path(worker.args[worker.args.index("--model") + 1])


@pytest.mark.parametrize("binary_data", [True, False])
def test_tritonclient_reads_our_errors(
    triton_client: triton.InferenceServerClient, binary_data: bool
) -> None:
    """tritonclient shows the body's "error": our message, naming what was expected."""
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer("digits", triton_inputs({"input": SAMPLES[:, :10]}, binary_data))
    assert caught.value.status() == "422"
    assert (
        caught.value.message() == "input 'input' dimension 1 must be 64 (shape [-1, 64]), got shape [5, 10]"
    )


# --- KServe -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kserve_python() -> Path:
    return pinned_venv(KSERVE_VENV, HERE / "kserve-client.txt") / "python"


def kserve_infer(
    python: Path,
    worker: Service,
    model: str,
    feeds: dict[str, np.ndarray],
    *,
    binary: bool,
    outputs: list[str],
) -> dict:
    spec = {
        "url": worker.url,
        "model": model,
        "id": "k-1",
        "binary": binary,
        "binary_output": binary,
        "outputs": outputs,
        "inputs": [
            {
                "name": name,
                "datatype": "BYTES" if array.dtype == object else triton.np_to_triton_dtype(array.dtype),
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
            for name, array in feeds.items()
        ],
    }
    done = subprocess.run(
        [str(python), str(HERE / "kserve_client.py")],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False])
def test_kserve_client(
    kserve_python: Path, digits_worker: Service, multi_worker: Service, binary: bool
) -> None:
    answer = kserve_infer(
        kserve_python, digits_worker, "digits", {"input": SAMPLES}, binary=binary, outputs=["label"]
    )
    assert answer["id"] == "k-1"
    assert list(answer["outputs"]) == ["label"]
    same(np.array(answer["outputs"]["label"]["data"]), in_process(DIGITS, {"input": SAMPLES})["label"])

    names = ["sum", "inverted", "tag_out"]
    answer = kserve_infer(kserve_python, multi_worker, "multi", MULTI, binary=binary, outputs=names)
    for name, want in in_process(multi_worker_model(multi_worker), MULTI).items():
        got = answer["outputs"][name]
        assert got["shape"] == list(want.shape)
        same(np.array(got["data"], dtype=want.dtype).reshape(got["shape"]), want)


@pytest.mark.slow
def test_kserve_client_reads_our_errors(kserve_python: Path, digits_worker: Service) -> None:
    answer = kserve_infer(
        kserve_python, digits_worker, "digits", {"input": SAMPLES[:, :10]}, binary=True, outputs=["label"]
    )
    assert answer["status"] == 422
    assert answer["message"].startswith(
        "input 'input' dimension 1 must be 64 (shape [-1, 64]), got shape [5, 10]"
    )
