"""The TransferJob API: models, validation and the generated CRD."""
