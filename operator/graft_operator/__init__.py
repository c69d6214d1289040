"""Graft control plane: the kopf operator that runs TransferJobs as KubeRay RayJobs. Installed as `graft_operator`
(from `operator/graft_operator/`: the folder is the import path, and the name shadows nothing in the standard
library)."""
