"""Graft data plane: the transfer-learning stages on Ray Train. Installed as `graft_trainer`."""
