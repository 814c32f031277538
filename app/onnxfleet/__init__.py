"""onnxfleet: serve an ONNX model from a fleet of worker containers behind one orchestrator."""

__version__ = "0.2.0"
