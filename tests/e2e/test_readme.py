"""The README's Usage block, run as written (bash, stock nnU-Net scripts, this package's commands) with a tiny
budget in a temp folder: the documented sequence cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import BIN
from tests.helpers import REPO

pytestmark = pytest.mark.slow

README = REPO / "README.md"
MARKER = "<!-- usage-block:"


def usage_blocks() -> tuple[str, str]:
    """(the set-up block before the marker, the usage block after it)."""
    text = README.read_text()
    before, after = text.split(MARKER, 1)
    setup = re.findall(r"```bash\n(.*?)```", before, re.S)[-1]
    usage = re.search(r"```bash\n(.*?)```", after, re.S).group(1)
    return setup, usage


def test_setup_block_sets_what_the_usage_needs():
    setup, usage = usage_blocks()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA",
                 "NNUNET_PRUNE_EPOCHS", "NNUNET_PRUNE_ITERS_PER_EPOCH", "NNUNET_PRUNE_VAL_ITERS", "NNUNET_PRUNE_SEED"):
        assert f"{name}=" in setup, name
    assert not re.search(r"\b[A-Z_]{4,}\b(?!=)", re.sub(r"\$\w+|\"[^\"]*\"|#.*", "", usage)), \
        "placeholders such as IMAGES or MODEL_FOLDER cannot be pasted"


def test_usage_block_runs_as_written(tmp_path):
    _, usage = usage_blocks()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_PRUNE_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "nnUNet_raw": str(tmp_path / "nnUNet_raw"), "nnUNet_preprocessed": str(tmp_path / "nnUNet_preprocessed"),
        "nnUNet_results": str(tmp_path / "nnUNet_results"), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "2",
        "nnUNet_compile": "f", "MPLBACKEND": "agg", "PYTHONUNBUFFERED": "1",
        # the tiny budget instead of the README's short one
        "NNUNET_PRUNE_EPOCHS": "2", "NNUNET_PRUNE_ITERS_PER_EPOCH": "3", "NNUNET_PRUNE_VAL_ITERS": "1",
    })
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / folder).mkdir()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", usage], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    models = tmp_path / "nnUNet_results" / "Dataset500_Synthetic2D"
    assert len(list((tmp_path / "pred_sauron").glob("*.nii.gz"))) == 5
    assert (tmp_path / "sweep" / "summary.md").is_file()
    assert (models / "nnUNetTrainerMagnitude_tau005__nnUNetPlans__2d" / "fold_0" / "validation" /
            "summary.json").is_file()
    assert (tmp_path / "sauron_slim" / "fold_0" / "checkpoint_final.pth").is_file()
    assert (tmp_path / "report" / "report.csv").is_file()
    assert "Traceback" not in proc.stderr
