"""`onnxfleet autoscale`: the worker node count from the orchestrator's queue (issue 19)."""
