"""The GPU run behind docs/structured.md, in one script: a dense LiTS-117 2D fold, then structured pruning
(L1/L2 x one-shot/iterative x 50/75/90 % of the filters, slimming x 50/75 % after sparsity training) fine-tuned from
it side by side (one nnU-Net results folder per run), held-out predictions of every model.

On the lent GPU machine (../shared/device/README.md), from the repository root, with the preprocessed LiTS-117 2D
data in .gpu/pre, the test slabs in .gpu/raw and nnU-Net's wheels installed into /tmp/site::

    OUT=/some/folder python3 benchmarks/gpu_structured_lits.py      # SMOKE=1: a CPU dry run with tiny budgets

Results go to $OUT as each run finishes; at the end everything is packed into $OUT/results.tgz (the device tool
returns a limited number of files). Then, here: ``python benchmarks/structured_table.py`` on the unpacked folder.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path(os.environ["OUT"])
ROOT = Path.cwd()
RES = Path("/tmp/res")
DS = "Dataset117_LiTS117"
BOOT = "import site; site.addsitedir('/tmp/site'); import sys; "
TRAIN = BOOT + ("from nnunetv2.run.run_training import run_training_entry as r; "
                "sys.argv=['nnUNetv2_train']+sys.argv[1:]; r()")
PRED = BOOT + ("from nnunetv2.inference.predict_from_raw_data import predict_entry_point as r; "
               "sys.argv=['nnUNetv2_predict']+sys.argv[1:]; r()")
ENV = {**os.environ, "nnUNet_raw": str(ROOT / ".gpu/raw"), "nnUNet_preprocessed": str(ROOT / ".gpu/pre"),
       "nnUNet_results": str(RES), "nnUNet_compile": "f", "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "2",
       "PYTHONPATH": "/tmp/site:/tmp/stub", "MPLBACKEND": "agg", "OMP_NUM_THREADS": "1"}
T0 = time.time()
SMOKE = os.environ.get("SMOKE") == "1"
DEVICE = ["-device", "cpu"] if SMOKE else []
LOG = open(OUT / "driver.log", "a")


def say(*a):
    print(f"[{time.time() - T0:6.0f} s]", *a, file=LOG, flush=True)
    print(f"[{time.time() - T0:6.0f} s]", *a, flush=True)


def run(code, args, env, name):
    start = time.time()
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], env={**ENV, **env}, capture_output=True,
                       text=True)
    (OUT / "logs").mkdir(exist_ok=True)
    (OUT / "logs" / f"{name}.txt").write_text(p.stdout[-20000:] + "\n--- stderr ---\n" + p.stderr[-20000:])
    say(f"{name}: rc={p.returncode} in {time.time() - start:.0f} s")
    return p.returncode


def collect(trainer, name, res=RES):
    src = res / DS / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    dst = OUT / "runs" / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("pruning_history.json", "pruning_config.json", "validation/summary.json", "progress.png",
              "pruning_widths.png"):
        if (src / f).is_file():
            shutil.copy(src / f, dst / f.replace("/", "_"))
    for log in src.glob("training_log_*.txt"):
        shutil.copy(log, dst / "training_log.txt")


def predict(trainer, name, res=RES):
    out = OUT / "pred" / name
    rc = run(PRED, ["-i", ROOT / ".gpu/raw" / DS / "imagesTs", "-o", out, "-d", "117", "-c", "2d", "-tr", trainer,
                    "-f", "0", "-npp", "1", "-nps", "1", "--disable_progress_bar", *DEVICE],
             {"nnUNet_results": str(res)}, f"predict_{name}")
    return rc


def finetune(job):
    name, trainer, env = job
    res = Path(f"/tmp/res_{name}")  # one results folder per run: runs of one trainer go side by side
    rc = run(TRAIN, ["117", "2d", "0", "-tr", trainer, *DEVICE], {**env, "nnUNet_results": str(res)}, name)
    if rc == 0:
        collect(trainer, name, res)
        predict(trainer, name, res)
    return name, rc


def main():
    dense_env = {"NNUNET_PRUNE_EPOCHS": "30", "NNUNET_PRUNE_ITERS_PER_EPOCH": "50", "NNUNET_PRUNE_VAL_ITERS": "10",
                 "nnUNet_n_proc_DA": "12"}
    if SMOKE:
        dense_env = {"NNUNET_PRUNE_EPOCHS": "1", "NNUNET_PRUNE_ITERS_PER_EPOCH": "2", "NNUNET_PRUNE_VAL_ITERS": "1",
                     "nnUNet_n_proc_DA": "0"}
    assert run(TRAIN, ["117", "2d", "0", "-tr", "nnUNetTrainerBudget", *DEVICE], dense_env, "dense") == 0
    collect("nnUNetTrainerBudget", "dense")
    predict("nnUNetTrainerBudget", "dense")
    dense = RES / DS / "nnUNetTrainerBudget__nnUNetPlans__2d"
    ft = {"NNUNET_PRUNE_EPOCHS": "10", "NNUNET_PRUNE_ITERS_PER_EPOCH": "40", "NNUNET_PRUNE_VAL_ITERS": "5",
          "NNUNET_PRUNE_DENSE_MODEL": str(dense)}
    if SMOKE:
        ft.update({"NNUNET_PRUNE_EPOCHS": "2", "NNUNET_PRUNE_ITERS_PER_EPOCH": "2", "NNUNET_PRUNE_VAL_ITERS": "1",
                   "nnUNet_n_proc_DA": "0"})
    jobs = [(f"{crit}_{sched}_{r}", f"nnUNetTrainerStructured{crit}_{sched}",
             {**ft, "NNUNET_PRUNE_STRUCTURED": f"pruning_ratio={r}"})
            for crit in ("L2", "L1") for sched in ("iterative", "oneshot") for r in ("0.9", "0.75", "0.5")]
    jobs.append(("slimming_sparsity", "nnUNetTrainerSlimmingSparsity_fromDense", dict(ft)))
    if SMOKE:
        jobs = jobs[:1] + jobs[-1:]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(finetune, jobs))
    say("wave 1 done", results)
    sparse = Path("/tmp/res_slimming_sparsity") / DS / "nnUNetTrainerSlimmingSparsity_fromDense__nnUNetPlans__2d"
    sl = {**ft, "NNUNET_PRUNE_DENSE_MODEL": str(sparse)}
    jobs = [(f"Slimming_{sched}_{r}", f"nnUNetTrainerStructuredSlimming_{sched}",
             {**sl, "NNUNET_PRUNE_STRUCTURED": f"pruning_ratio={r}"})
            for sched in ("iterative", "oneshot") for r in ("0.75", "0.5")]
    if SMOKE:
        jobs = jobs[:1]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(finetune, jobs))
    say("wave 2 done", results)
    import tarfile

    with tarfile.open(OUT / "results.tgz", "w:gz") as tar:  # the fold folders without weights, the predictions
        for res in [RES, *sorted(Path("/tmp").glob("res_*"))]:
            tar.add(res, arcname=res.name, filter=lambda t: None if t.name.endswith((".pth", ".npz", ".pkl")) else t)
        tar.add(OUT / "pred", arcname="pred")
    (OUT / "done.json").write_text(json.dumps({"seconds": time.time() - T0}))


if __name__ == "__main__":
    main()
