"""Load tests and benchmarks for onnx-serve: Locust users, a headless sweep, `make bench`."""
