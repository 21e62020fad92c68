"""Models the tests and benchmarks build in PyTorch and export to ONNX (torch is test-only)."""
