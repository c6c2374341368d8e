"""Pure PyTorch helpers every layer may use (no nnU-Net, no environment, no other nnunet_prune module)."""
