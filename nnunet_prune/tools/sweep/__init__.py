"""Sweeps of a trained model before fine-tuning: one engine (:mod:`.engine`) along a magnitude-threshold axis
(:mod:`.magnitude`) or a structured-pruning fraction axis (:mod:`.structured`)."""
