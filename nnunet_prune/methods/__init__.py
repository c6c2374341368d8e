"""Layer 3: the papers' algorithms -- when and what to prune -- on top of criteria, without touching tensors."""
