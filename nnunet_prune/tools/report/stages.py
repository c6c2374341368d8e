"""Where a case's prediction time goes: stock nnU-Net prediction split into its stages.

``nnUNetv2_predict_from_modelfolder`` overlaps its stages (preprocessing in a background process, export in a pool),
so its wall time alone says nothing of where the time goes. :func:`measure_stages` runs the same nnU-Net functions,
one stage after the other, in a fresh subprocess (what a user's prediction process does, without the overlap):

* **start-up**: Python start, imports, ``nnUNetPredictor.initialize_from_trained_model_folder`` (every fold loaded,
  the runtime's model compiled on its first call is in *network* instead);
* per case: **read** (the plans' image reader), **preprocess** (``DefaultPreprocessor.run_case_npy``: transpose,
  crop, normalise, resample), **network** (``predict_logits_from_preprocessed_data``: every fold, the sliding window
  with its Gaussian weighting and, with test-time mirroring, up to 8 mirrored copies of each tile), split into the
  network's forward calls (counted: tiles x mirrors x folds) and the sliding window's own work, **resample logits**
  (``convert_predicted_logits_to_segmentation_with_correct_shape``: back to the image's geometry, argmax) and
  **write** (the plans' writer);
* **exit**: from the last case's end to the subprocess's exit (interpreter shutdown: threads, pools, modules);
* **peak memory**: the subprocess's peak resident memory read after every stage (``ru_maxrss``; not on Windows),
  so the stage that reached the peak is known;
* **unaccounted**: the subprocess's wall time (measured by this process, from spawn to exit) minus all of the
  above; a test holds it within 5 % of the wall time, so the stages say where the time went.

Source: nnU-Net v2's ``nnUNetPredictor.predict_from_files`` and ``export_prediction_from_logits``, whose functions
are called here unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_prune import NnUNetPruneError

#: the stages in order; each is seconds summed over the cases except start-up
STAGES = ("start-up", "read", "preprocess", "network forward", "sliding window", "resample logits", "write",
          "exit", "unaccounted")
_MARK = "nnunet-prune stages: "
#: the stage-by-stage prediction, run as ``python -c SCRIPT START MODEL IMAGES OUT STEP TTA DEVICE CHK FOLDS...``
_SCRIPT = r'''
import json, sys, time
start = float(sys.argv[1])
try:
    import resource
except ImportError:  # Windows: no peak memory
    resource = None
def rss():  # peak resident memory of this process so far, MB (Linux: kB, macOS: bytes)
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
model, images, out, step, tta, device, chk = sys.argv[2:9]
folds = [f if f == "all" else int(f) for f in sys.argv[9:]]
from pathlib import Path
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
predictor = nnUNetPredictor(tile_step_size=float(step), use_mirroring=tta == "1", device=torch.device(device),
                            verbose=False, allow_tqdm=False)
predictor.initialize_from_trained_model_folder(model, folds, chk)
startup = time.time() - start
peaks = {"start-up": rss()}
net, forward = predictor.network, predictor.network.forward
calls = [0, 0.0]
def timed(*a, **k):
    t = time.perf_counter()
    y = forward(*a, **k)
    if torch.is_tensor(y) and y.device.type == "cuda":
        torch.cuda.synchronize(y.device)
    calls[0] += 1
    calls[1] += time.perf_counter() - t
    return y
net.forward = timed
pm, cm, dj = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
rw, pre = pm.image_reader_writer_class(), cm.preprocessor_class(verbose=False)
ending = dj["file_ending"]
cases = sorted({p.name[:-len(ending) - 5] for p in Path(images).glob("*_0000" + ending)})
channels = len(dj.get("channel_names", dj.get("modality", {})))
stages = dict.fromkeys(["read", "preprocess", "network", "resample logits", "write"], 0.0)
Path(out).mkdir(parents=True, exist_ok=True)
for case in cases:
    t = time.perf_counter()
    data, props = rw.read_images([str(Path(images) / f"{case}_{c:04d}{ending}") for c in range(channels)])
    stages["read"] += time.perf_counter() - t; peaks["read"] = rss(); t = time.perf_counter()
    data, _, props = pre.run_case_npy(data, None, props, pm, cm, dj)
    stages["preprocess"] += time.perf_counter() - t; peaks["preprocess"] = rss(); t = time.perf_counter()
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    stages["network"] += time.perf_counter() - t; peaks["network"] = rss(); t = time.perf_counter()
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(logits, pm, cm, predictor.label_manager, props)
    stages["resample logits"] += time.perf_counter() - t; peaks["resample logits"] = rss(); t = time.perf_counter()
    rw.write_seg(seg, str(Path(out) / (case + ending)), props)
    stages["write"] += time.perf_counter() - t; peaks["write"] = rss()
print("''' + _MARK + r'''" + json.dumps({"start-up": startup, **stages, "forward": calls[1], "calls": calls[0],
                                        "cases": len(cases), "peaks": peaks, "end": time.time()}), flush=True)
'''


@dataclass
class StageTiming:
    """One stage-by-stage prediction of a model folder's folds through one runtime: seconds per stage
    (:data:`STAGES`, summed over ``cases``), the network's forward calls, and the wall time of the subprocess."""

    model: str
    runtime: str
    cases: int
    folds: list
    tta: bool
    step_size: float
    wall_seconds: float
    seconds: dict = field(default_factory=dict)
    forward_calls: int = 0
    error: str | None = None
    #: peak resident memory of the prediction process (MB) at the end of each stage (start-up, read, preprocess,
    #: network, resample logits, write; the last case's): a stage whose value rises above the one before set a new
    #: peak, the last value is the process's peak
    peak_rss_mb: dict = field(default_factory=dict)


def run_stages(model: str | os.PathLike, images: str | os.PathLike, output: str | os.PathLike, folds: Sequence,
               *, step_size: float = 0.5, tta: bool = True, device: str = "cpu",
               checkpoint: str = "checkpoint_final.pth", label: str | None = None,
               runtime: str = "pytorch") -> StageTiming:
    """Predict every image of ``images`` (nnU-Net's names) with ``model``'s ``folds`` stage by stage in a fresh
    subprocess (module docstring), segmentations into ``output``; returns the timing (``error`` set when the
    subprocess failed: its last line).

    Raises:
        NnUNetPruneError: a step size outside (0, 1].
    """
    if not 0 < step_size <= 1:
        raise NnUNetPruneError(f"--step-size must be in (0, 1] (nnU-Net's default 0.5); got {step_size}.")
    env = {**os.environ, "nnUNet_compile": "f"}
    row = StageTiming(label or Path(model).name, runtime, 0, list(folds), tta, step_size, 0.0)
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, repr(start), str(model), str(images), str(output),
                           str(step_size), "1" if tta else "0", device, checkpoint, *map(str, folds)],
                          capture_output=True, text=True, env=env)
    row.wall_seconds = time.time() - start
    found = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode != 0 or not found:
        lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
        row.error = lines[-1][:300] if lines else f"exit code {proc.returncode}"
        return row
    data = json.loads(found[-1][len(_MARK):])
    row.cases, row.forward_calls = data["cases"], data["calls"]
    row.seconds = {"start-up": data["start-up"], "read": data["read"], "preprocess": data["preprocess"],
                   "network forward": data["forward"], "sliding window": data["network"] - data["forward"],
                   "resample logits": data["resample logits"], "write": data["write"]}
    row.peak_rss_mb = {k: v for k, v in data.get("peaks", {}).items() if v is not None}
    row.seconds["exit"] = max(start + row.wall_seconds - data["end"], 0.0)
    row.seconds["unaccounted"] = row.wall_seconds - sum(row.seconds.values())
    return row


def peak_memory(row: StageTiming) -> str:
    """``'2712 (network)'``: the process's peak resident memory (MB) and the first stage that reached it; '-' when
    not measured."""
    if not row.peak_rss_mb:
        return "-"
    peak = max(row.peak_rss_mb.values())
    return f"{peak:.0f} ({next(k for k, v in row.peak_rss_mb.items() if v >= peak)})"


def format_stages(rows: Sequence[StageTiming]) -> list[str]:
    """Markdown lines: one row per run, seconds per stage and its share of the wall time."""
    if not rows:
        return []
    lines = ["| Model | Runtime | Cases | " + " | ".join(STAGES) + " | wall s | forward calls | peak MB (stage) |",
             "|:---|:---|---:|" + "---:|" * (len(STAGES) + 3)]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.model} | {r.runtime} | - | failed: {r.error.replace('|', '/')} |" + " |" * (
                len(STAGES) + 2))
            continue
        cells = [f"{r.seconds[s]:.2f} ({r.seconds[s] / r.wall_seconds:.0%})" for s in STAGES]
        lines.append(f"| {r.model} | {r.runtime} | {r.cases} | " + " | ".join(cells) +
                     f" | {r.wall_seconds:.2f} | {r.forward_calls} | {peak_memory(r)} |")
    r = rows[0]
    lines += ["", f"Stage by stage with nnU-Net's own functions in a fresh process (no overlap of preprocessing, "
                  f"network and export as in the stock command), step size {r.step_size}, test-time mirroring "
                  f"{'on' if r.tta else 'off'}, folds {','.join(map(str, r.folds))}; seconds summed over the cases "
                  f"(share of the wall time). 'sliding window': the network stage beyond its forward calls "
                  f"(Gaussian weighting, accumulation, copies); 'exit': interpreter shutdown after the last case; "
                  f"'unaccounted': the wall time beyond all of these; 'peak MB': the prediction process's peak "
                  f"resident memory and the stage that reached it."]
    return lines
