"""Stubs generated from protos/ by `make proto` (grpcio-tools). Never edit by hand."""
