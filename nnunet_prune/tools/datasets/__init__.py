"""Demo datasets as nnU-Net raw datasets: a synthetic phantom (offline) and the LiTS-117 CT crop."""
