"""Serving: TorchServe process and config, REST/gRPC clients, parity checks, deployment."""
