"""Runs inside KServe's own venv (``.cache/clients/kserve``, see test_oip_clients.py):
one inference with KServe's ``InferenceRESTClient``, as its users write it.

stdin: ``{"url", "model", "id", "binary": bool, "binary_output": bool,
"inputs": [{"name", "datatype", "shape", "data"}]}``; stdout: ``{"id", "outputs":
{name: {"datatype", "shape", "data"}}}`` or ``{"status", "message"}`` on an HTTP error.
"""

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": object}


async def main() -> None:
    spec = json.load(sys.stdin)
    inputs = []
    for tensor in spec["inputs"]:
        array = np.array(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])
        infer_input = InferInput(tensor["name"], tensor["shape"], tensor["datatype"])
        infer_input.set_data_from_numpy(array, binary_data=spec["binary"])
        inputs.append(infer_input)
    outputs = [RequestedOutput(name, {"binary_data": spec["binary_output"]}) for name in spec["outputs"]]
    request = InferRequest(
        model_name=spec["model"], infer_inputs=inputs, request_id=spec["id"], request_outputs=outputs
    )
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        response = await client.infer(spec["url"], request, model_name=spec["model"])
    except httpx.HTTPStatusError as exc:
        print(json.dumps({"status": exc.response.status_code, "message": str(exc)}))
        return
    answer = {}
    for output in response.outputs:
        array = output.as_numpy()
        data = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
        answer[output.name] = {"datatype": output.datatype, "shape": list(array.shape), "data": data}
    print(json.dumps({"id": response.id, "outputs": answer}))


asyncio.run(main())
