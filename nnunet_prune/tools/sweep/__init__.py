"""Sweeps of a trained model before fine-tuning: magnitude thresholds (:mod:`.magnitude`) and structured pruning
fractions (:mod:`.structured`)."""
