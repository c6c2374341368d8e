"""Does ONNX Runtime static INT8 (QDQ) pay on this CPU? The full-size case's folds, per patch, side by side.

For each fold of :mod:`full_size_case`'s ``--work`` folder (run that first), NNCF's ONNX backend quantizes the fold's
ONNX model (``to_onnx``, as ``export --runtime onnxruntime`` writes it) into a QDQ model on the fold's calibration
patches (the export's own ``calibration_patches``; preset ``performance``), and ONNX Runtime's CPU provider times the
float32 and the QDQ model on the same patch (batch 1, ``--threads``, median of 3 after one warm-up). "alike": voxels of
that patch whose argmax agrees between the two. Compare with the OpenVINO INT8 column of ``full_size_case.py``.

Usage (2-core CPU: about 4 minutes)::

    python benchmarks/ort_qdq_latency.py --work /tmp/fullsize
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

try:
    from benchmarks import full_size_case
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import full_size_case


def _session(blob: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def _median_ms(session, feed: dict, repeats: int = 3) -> float:
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="full_size_case.py's working folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration-patches", type=int, default=20)
    a = p.parse_args(argv)
    os.environ.update(full_size_case.environment(a.work))
    import nncf
    import onnx

    from nnunet_prune.networks.runtime import to_onnx
    from nnunet_prune.nnunet.calibration import calibration_patches, dataset_folders, fold_cases
    from nnunet_prune.nnunet.modelfolder import ModelFolder

    print("| model | ONNX Runtime float32 ms | ONNX Runtime QDQ INT8 ms | QDQ vs float | alike |")
    print("|:---|---:|---:|---:|---:|")
    for label in full_size_case.MODELS:
        folder = ModelFolder.open(full_size_case.model_folder(a.work, label), [0])
        folders = dataset_folders(folder)
        patches = calibration_patches(folder, folders, fold_cases(folder, folders, [0])[0], a.calibration_patches)
        blob = to_onnx(folder.load_network(0).eval(), folder.patch_size)
        name = onnx.load_from_string(blob).graph.input[0].name
        qdq = nncf.quantize(onnx.load_from_string(blob), nncf.Dataset(patches, lambda x, key=name: {key: x}),
                            preset=nncf.QuantizationPreset.PERFORMANCE).SerializeToString()
        feed = {name: patches[0]}
        fp32, int8 = _session(blob, a.threads), _session(qdq, a.threads)
        alike = float((fp32.run(None, feed)[0].argmax(1) == int8.run(None, feed)[0].argmax(1)).mean())
        f, q = _median_ms(fp32, feed), _median_ms(int8, feed)
        print(f"| {label} | {f:.0f} | {q:.0f} | {f / q:.2f}x | {alike:.1%} |", flush=True)


if __name__ == "__main__":
    main()
