"""Graft: a Kubernetes-native transfer-learning operator."""

__version__ = "0.1.0"
