"""Seeds for nnU-Net trainings: one variable, ``NNUNET_PRUNE_SEED``, read by every trainer of this package.

nnU-Net does not seed its training: the weights' initialisation (PyTorch), the patches its data loader picks
(NumPy's global generator), the augmentation's draws (NumPy and PyTorch) and this package's methods' draws differ
from run to run, so two short runs of the same network can differ by more than two methods do. A trainer of this
package with a seed (the variable, else the trainer class's ``seed`` attribute) calls :func:`seed_everything` once
nnU-Net's ``__init__`` has run, before the network is built, and gives its method a generator derived from the
seed. With ``nnUNet_n_proc_DA=0`` (the CPU set-up) two runs with the same seed on the same machine (same PyTorch
build and thread count) are identical, checkpoint for checkpoint. With augmentation worker processes each worker is
seeded too (:func:`seed_augmenter_workers`), but batchgenerators' ``NonDetMultiThreadedAugmenter`` hands the
training loop whichever worker's batch is ready first, so the order of batches, and with it the result, still
depends on timing: close, not identical. On a GPU, cuDNN's autotuned kernels are not bit-reproducible either.

Nothing here imports PyTorch or nnU-Net at module level: the tools check a ``--seed`` before any heavy import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from nnunet_prune import NnUNetPruneError

SEED_VAR = "NNUNET_PRUNE_SEED"
#: NumPy's global generator takes seeds below 2**32
MAX_SEED = 2 ** 32 - 1
#: streams of :func:`derived_seeds`: the method's generator, the training and the validation augmentation workers
METHOD_STREAM, TRAIN_WORKERS, VAL_WORKERS = 1, 2, 3


def check_seed(value, what: str = SEED_VAR) -> int:
    """``value`` (an int, or a string of one) as a seed: a whole number from 0 to 2**32 - 1.

    Raises:
        NnUNetPruneError: anything else, naming ``what`` (the variable, option or attribute that gave it).
    """
    if isinstance(value, bool):
        n = -1
    elif isinstance(value, int):
        n = value
    else:
        try:
            n = int(str(value).strip())
        except ValueError:
            n = -1
    if not 0 <= n <= MAX_SEED:
        raise NnUNetPruneError(f"{what}={value!r}: a seed is a whole number from 0 to {MAX_SEED} (nothing was "
                               f"written).")
    return n


def read_seed(environ: Mapping[str, str] | None = None, default: int | None = None,
              owner: str = "the trainer") -> int | None:
    """The seed of a training: ``NNUNET_PRUNE_SEED`` when set and not empty, else ``default`` (a trainer class's
    ``seed`` attribute, named ``owner`` in errors); None: unseeded, nnU-Net's behaviour.

    Raises:
        NnUNetPruneError: the value is not a seed (:func:`check_seed`).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(SEED_VAR, "")
    if value.strip():
        return check_seed(value)
    return None if default is None else check_seed(default, f"{owner}.seed")


def derived_seeds(seed: int, stream: int, n: int = 1, rank: int = 0) -> list[int]:
    """``n`` independent 32-bit seeds for one use (``stream``) of ``seed`` on DDP rank ``rank``, from NumPy's
    ``SeedSequence`` (not ``seed + i``: neighbouring seeds would share streams)."""
    import numpy as np

    return [int(x) for x in np.random.SeedSequence([seed, rank, stream]).generate_state(n)]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and PyTorch's (the CPU's and every CUDA device's)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def method_rng(seed: int | None, rank: int = 0):
    """A NumPy generator for a pruning method's own draws (random channels, reference channels), derived from
    ``seed``; None for an unseeded training (the method makes its own)."""
    import numpy as np

    return None if seed is None else np.random.default_rng(derived_seeds(seed, METHOD_STREAM, rank=rank)[0])


def seed_augmenter_workers(augmenter, seed: int, stream: int, rank: int = 0) -> bool:
    """Give each worker process of a batchgenerators multi-process augmenter (``NonDetMultiThreadedAugmenter``,
    ``MultiThreadedAugmenter``: they have ``seeds`` and ``restart()``) its own seed from ``seed`` and restart the
    workers with them; nnU-Net starts them unseeded. Returns False (nothing done) for the single-process augmenter
    of ``nnUNet_n_proc_DA=0``, which draws from the generators :func:`seed_everything` seeded."""
    n = getattr(augmenter, "num_processes", None)
    if not isinstance(n, int) or n < 1 or not hasattr(augmenter, "seeds") or not callable(
            getattr(augmenter, "restart", None)):
        return False
    augmenter.seeds = derived_seeds(seed, stream, n, rank)
    augmenter.restart()
    return True
