"""Graft control plane: the kopf operator that turns TransferJobs into KubeRay RayJobs.

Installed as `graft.operator`; never importable as top-level `operator` (a standard-library name).
"""
