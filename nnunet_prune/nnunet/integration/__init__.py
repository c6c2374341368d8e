"""Glue that makes the stock nnU-Net commands see this package (see ``_nnunet_prune_hook``)."""
