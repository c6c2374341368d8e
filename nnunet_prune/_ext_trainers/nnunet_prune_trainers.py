# Shim for nnU-Net's trainer search path (nnUNet_extTrainer). nnU-Net imports every module of that folder and
# unloads them afterwards; this one only re-exports the trainers, whose classes live in nnunet_prune.nnunet.trainers.
from nnunet_prune.nnunet.trainers import *  # noqa: F401,F403
