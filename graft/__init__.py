"""Graft: a Kubernetes-native transfer-learning operator.

The shared core (API models, ledger, storage, CLI). The control plane is the package `graft_operator` (folder
`operator/graft_operator/`) and the data plane `graft_trainer` (`trainer/graft_trainer/`): every folder is its import
path, so this package adds nothing to its `__path__` (`graft.graft`, `graft.tests` do not exist)."""

__version__ = "0.1.0"
