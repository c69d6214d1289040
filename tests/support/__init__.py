"""Test support: services the tests start themselves (moto S3 server, emulated Kubernetes API)."""
