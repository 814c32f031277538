"""The Open Inference Protocol v2 codec (JSON and Triton's binary tensor extension) and
the worker's own ``/run_model`` format: pure functions over bytes and numpy arrays,
shared by the worker and the orchestrator so that both write the same bytes."""

from onnxfleet.oip import run_model
from onnxfleet.oip.datatypes import DATATYPES, DTYPES, datatype_of
from onnxfleet.oip.errors import CodecError, InvalidInput, UnsupportedMediaType, envelope
from onnxfleet.oip.infer import (
    BINARY_TYPE,
    HEADER_LENGTH,
    JSON_TYPE,
    InferRequest,
    InferResponse,
    RequestedOutput,
    decode_response,
    encode_request,
    encode_response,
    parse_request,
)
from onnxfleet.oip.tensors import Signature, TensorSpec

__all__ = [
    "BINARY_TYPE",
    "DATATYPES",
    "DTYPES",
    "HEADER_LENGTH",
    "JSON_TYPE",
    "CodecError",
    "InferRequest",
    "InferResponse",
    "InvalidInput",
    "RequestedOutput",
    "Signature",
    "TensorSpec",
    "UnsupportedMediaType",
    "datatype_of",
    "decode_response",
    "encode_request",
    "encode_response",
    "envelope",
    "parse_request",
    "run_model",
]
