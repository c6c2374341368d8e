"""Layer 2: scores for channels (pure functions of activations or weights; no surgery, no schedule)."""
