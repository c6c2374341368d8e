"""The ``nnunet-prune`` command."""
