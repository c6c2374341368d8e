"""Layer 5: nnU-Net's side -- trainer variants and their driver, planners, the start-up integration, model folders,
class names and settings. The only layer below the tools that imports nnunetv2 or reads the environment.

Importing this package is cheap (no torch, no nnU-Net): its modules import what they need.
"""
