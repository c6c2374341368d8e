"""Layer 6: what users run -- export and runtimes, sweeps, the efficiency report, the benchmark and demo, datasets.

Importing this package is cheap (no torch, no nnU-Net): the command line imports a tool only when it runs.
"""
