"""`onnxfleet worker`: one ONNX model behind HTTP (Flask under gunicorn, onnxruntime)."""
