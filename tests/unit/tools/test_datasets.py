"""Demo datasets: the synthetic phantom, the LiTS-117 crop (from a fake wheel built here, and once from PyPI),
the nnU-Net raw-dataset writer and ``nnunet-prune dataset``."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import struct
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnunet_prune import NnUNetPruneError
from nnunet_prune.cli.main import main
from nnunet_prune.tools.datasets import common, lits117
from nnunet_prune.tools.datasets.common import RawCase, write_raw_dataset
from nnunet_prune.tools.datasets.lits117 import MEMBERS, create_lits117_dataset, fetch_wheel, load_volume, read_mrc
from nnunet_prune.tools.datasets.synthetic import LABELS, create_synthetic_dataset, make_case


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """nnU-Net's three folders inside tmp_path (created), set in the environment; cwd is tmp_path too."""
    out = {}
    for var in common.NNUNET_FOLDER_VARS:
        out[var] = tmp_path / var
        out[var].mkdir()
        monkeypatch.setenv(var, str(out[var]))
    monkeypatch.chdir(tmp_path)
    return out


def tree(root: Path) -> set[str]:
    """Every path under root (hidden ones included), relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def read_case(folder: Path, split: str, identifier: str):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    io = NibabelIO()
    image, props = io.read_images([str(folder / f"images{split}" / f"{identifier}_0000.nii.gz")])
    seg, seg_props = io.read_seg(str(folder / f"labels{split}" / f"{identifier}.nii.gz"))
    assert tuple(props["spacing"]) == tuple(seg_props["spacing"])
    return image, seg, tuple(float(s) for s in props["spacing"])


# ----------------------------------------------------------------------------------------------- phantom
@pytest.mark.parametrize("dim, size", [(2, 32), (3, 16)])
def test_make_case_deterministic_and_varied(dim, size):
    image, label = make_case(3, 5, dim, size)
    again = make_case(3, 5, dim, size)
    assert np.array_equal(image, again[0]) and np.array_equal(label, again[1])
    assert image.shape == label.shape == (size,) * dim
    assert image.dtype == np.float32 and label.dtype == np.uint8
    for other in (make_case(4, 5, dim, size), make_case(3, 6, dim, size)):
        assert not np.array_equal(image, other[0])
        assert not np.array_equal(label, other[1])


def test_make_case_default_sizes():
    assert make_case(0, 0, 2)[0].shape == (64, 64)
    assert make_case(0, 0, 3)[1].shape == (32, 32, 32)


@pytest.mark.parametrize("dim, size", [(2, 32), (3, 32)])
def test_make_case_labels_and_intensities(dim, size):
    all_labels = 0
    for i in range(20):
        image, label = make_case(0, i, dim, size)
        present = set(np.unique(label).tolist())
        assert present <= {0, 1, 2, 3}
        assert {0, 1, 3} <= present, (i, present)  # background, organ and vessel always; the lesion may be absent
        all_labels += present == {0, 1, 2, 3}
        # HU-like: air around the body, soft tissue and contrast-enhanced vessel in the usual ranges
        assert image.min() < -900 and -200 < image.max() < 400
        corners = image[tuple(np.meshgrid(*[[0, -1]] * dim, indexing="ij"))]
        assert (corners < -800).all() and (label[tuple(np.meshgrid(*[[0, -1]] * dim, indexing="ij"))] == 0).all()
        body = float(np.median(image[(label == 0) & (image > -500)]))
        organ = float(np.median(image[label == 1]))
        vessel = float(np.median(image[label == 3]))
        assert body < organ < vessel and -20 < organ < 140  # the image shows the labels where they are
        if (label == 2).sum() >= 20:  # tiny lesions are blurred into the organ
            assert float(np.median(image[label == 2])) < organ  # hypodense lesion
    assert all_labels >= 12  # most cases have a lesion


# ----------------------------------------------------------------------------------------------- writer
def test_synthetic_2d_dataset_reads_back_with_nnunet(folders):
    folder = create_synthetic_dataset(501, dim=2, cases=3, test_cases=2, seed=7, size=24)
    assert folder == folders["nnUNet_raw"] / "Dataset501_Synthetic2D"
    assert tree(folders["nnUNet_raw"]) == {"Dataset501_Synthetic2D", *{
        f"Dataset501_Synthetic2D/{p}" for p in (
            "dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs",
            *[f"imagesTr/phantom_{i:03d}_0000.nii.gz" for i in range(3)],
            *[f"labelsTr/phantom_{i:03d}.nii.gz" for i in range(3)],
            *[f"imagesTs/phantom_{i:03d}_0000.nii.gz" for i in (3, 4)],
            *[f"labelsTs/phantom_{i:03d}.nii.gz" for i in (3, 4)])}}
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == LABELS == {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
    assert meta["numTraining"] == 3 and meta["numTest"] == 2
    assert meta["file_ending"] == ".nii.gz"
    assert meta["overwrite_image_reader_writer"] == "NibabelIO"
    for i, split in [(0, "Tr"), (2, "Tr"), (3, "Ts")]:
        image, seg, spacing = read_case(folder, split, f"phantom_{i:03d}")
        expected_image, expected_label = make_case(7, i, 2, 24)
        assert image.shape == seg.shape == (1, 1, 24, 24)  # (channel, 1, y, x): 2D stored as (1, y, x)
        assert spacing == (1.0, 1.0, 1.0)
        np.testing.assert_array_equal(image[0, 0], expected_image)
        np.testing.assert_array_equal(seg[0, 0], expected_label)


def test_synthetic_3d_dataset_reads_back_with_nnunet(folders):
    folder = create_synthetic_dataset(502, dim=3, cases=2, test_cases=1, seed=1, size=12)
    assert folder.name == "Dataset502_Synthetic3D"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["nnunet_prune"]["dim"] == 3
    image, seg, spacing = read_case(folder, "Ts", "phantom_002")
    expected_image, expected_label = make_case(1, 2, 3, 12)
    assert image.shape == seg.shape == (1, 12, 12, 12)
    assert spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(image[0], expected_image)
    np.testing.assert_array_equal(seg[0], expected_label)


def test_writer_keeps_axis_order_and_anisotropic_spacing(folders, tmp_path):
    """A (z, y, x) array with distinct extents and spacing comes back unchanged (no axis swapped)."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 5, 7)).astype(np.float32)
    label = (rng.uniform(size=(3, 5, 7)) * 3).astype(np.uint8)
    image2d = rng.normal(size=(5, 9)).astype(np.float32)
    label2d = (image2d > 0).astype(np.uint8)
    raw = tmp_path / "elsewhere"
    folder = write_raw_dataset(
        42, "Axes", {"0": "MR"}, {"background": 0, "a": 1, "b": 2},
        [RawCase("c3d", image, label, (3.0, 0.5, 0.75)), RawCase("c2d", image2d, label2d, (0.6, 0.8))],
        [], raw=raw)
    assert folder == raw.resolve() / "Dataset042_Axes"  # --raw wins over $nnUNet_raw
    assert not any(folders["nnUNet_raw"].iterdir())
    img, seg, spacing = read_case(folder, "Tr", "c3d")
    assert img.shape == (1, 3, 5, 7) and spacing == pytest.approx((3.0, 0.5, 0.75))
    np.testing.assert_array_equal(img[0], image)
    np.testing.assert_array_equal(seg[0], label)
    img, seg, spacing = read_case(folder, "Tr", "c2d")
    assert img.shape == (1, 1, 5, 9) and spacing == pytest.approx((1.0, 0.6, 0.8))
    np.testing.assert_array_equal(img[0, 0], image2d)
    np.testing.assert_array_equal(seg[0, 0], label2d)
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == []
    assert json.loads((folder / "dataset.json").read_text())["numTest"] == 0


def test_nnunet_verify_dataset_integrity_accepts_synthetic(folders, monkeypatch):
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi

    folder = create_synthetic_dataset(503, dim=2, cases=2, test_cases=1, size=16)
    # nnU-Net checks the label files with a 'spawn' pool: every worker re-imports torch and nnU-Net (~10 s on a
    # busy machine). A 'fork' pool runs the same checks in the same worker functions, without the imports.
    monkeypatch.setattr(vdi, "multiprocessing", types.SimpleNamespace(
        get_context=lambda method: multiprocessing.get_context("fork")))
    vdi.verify_dataset_integrity(str(folder), num_processes=1)  # raises (AssertionError/RuntimeError) on problems


def test_failure_while_writing_leaves_nothing(folders, monkeypatch):
    calls = []
    original = common.write_nifti

    def failing(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(common, "write_nifti", failing)
    with pytest.raises(OSError):
        create_synthetic_dataset(504, dim=2, cases=2, test_cases=1, size=16)
    assert len(calls) == 3  # it really failed half-way
    assert tree(folders["nnUNet_raw"]) == set()  # no dataset, no hidden temporary folder


# ----------------------------------------------------------------------------------------------- CLI and bad input
def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["dataset", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_synthetic_writes_dataset(folders, capsys):
    code, out, err = run_cli(capsys, "synthetic", "-d", "505", "--cases", "2", "--test-cases", "1", "--size", "16",
                             "--dim", "3", "--seed", "2")
    assert code == 0, err
    folder = folders["nnUNet_raw"] / "Dataset505_Synthetic3D"
    assert str(folder) in out
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["nnunet_prune"] == {"generator": "synthetic", "dim": 3, "seed": 2,
                                                                 "size": 16}
    image, seg, _ = read_case(folder, "Tr", "phantom_001")
    np.testing.assert_array_equal(image[0], make_case(2, 1, 3, 16)[0])


@pytest.mark.parametrize("where", ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"])
def test_cli_refuses_used_dataset_id(folders, capsys, tmp_path, where):
    (folders[where] / "Dataset007_Mine").mkdir()
    (folders[where] / "Dataset007_Mine" / "keep.txt").write_text("precious")
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "synthetic", "-d", "7", "--cases", "2", "--test-cases", "0", "--size", "16")
    assert code == 2
    assert err.startswith("ERROR: ") and "Dataset ID 7 is already used by Dataset007_Mine" in err
    assert str(folders[where]) in err and "Traceback" not in err
    assert tree(tmp_path) == before
    assert (folders[where] / "Dataset007_Mine" / "keep.txt").read_text() == "precious"
    with pytest.raises(NnUNetPruneError, match="already used"):
        create_synthetic_dataset(7, cases=2, test_cases=0, size=16)
    assert tree(tmp_path) == before


def test_other_ids_with_same_digits_do_not_block(folders):
    (folders["nnUNet_raw"] / "Dataset070_Other").mkdir()
    (folders["nnUNet_results"] / "Dataset0071_Odd").mkdir()
    assert create_synthetic_dataset(7, cases=2, test_cases=0, size=16).name == "Dataset007_Synthetic2D"


@pytest.mark.parametrize("dataset_id", ["0", "1000", "-3"])
@pytest.mark.parametrize("kind", ["synthetic", "lits117"])
def test_cli_rejects_out_of_range_id(folders, capsys, tmp_path, dataset_id, kind):
    before = tree(tmp_path)
    extra = ["--wheel", str(tmp_path / "missing.whl")] if kind == "lits117" else ["--size", "16"]
    code, _, err = run_cli(capsys, kind, "-d", dataset_id, *extra)
    assert code == 2
    assert err.startswith("ERROR: ")
    if kind == "synthetic":
        assert "between 1 and 999" in err
    assert tree(tmp_path) == before


def test_cli_without_raw_folder(folders, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("nnUNet_raw")
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "synthetic", "-d", "9", "--size", "16", "--cases", "2")
    assert code == 2
    assert "ERROR: nnUNet_raw is not set" in err and "--raw" in err
    assert tree(tmp_path) == before
    # --raw is enough
    code, _, err = run_cli(capsys, "synthetic", "-d", "9", "--size", "16", "--cases", "2", "--test-cases", "0",
                           "--raw", str(tmp_path / "given"))
    assert code == 0, err
    assert (tmp_path / "given" / "Dataset009_Synthetic2D" / "dataset.json").is_file()


def test_cli_unwritable_raw_folder(folders, capsys, tmp_path):
    raw = folders["nnUNet_raw"]
    raw.chmod(0o555)
    try:
        if os.access(raw, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        before = tree(tmp_path)
        code, _, err = run_cli(capsys, "synthetic", "-d", "11", "--size", "16", "--cases", "2")
        assert code == 2
        assert "ERROR: Cannot write to" in err and str(raw) in err
        assert tree(tmp_path) == before
        code, _, err = run_cli(capsys, "synthetic", "-d", "11", "--size", "16", "--cases", "2",
                               "--raw", str(raw / "sub"))
        assert code == 2 and "Cannot write to" in err
        assert tree(tmp_path) == before
    finally:
        raw.chmod(0o755)


def test_cli_raw_folder_below_a_file(folders, capsys, tmp_path):
    """A raw folder that cannot be created (a file is in the way): works as root too, unlike chmod."""
    (tmp_path / "a_file").write_text("x")
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "synthetic", "-d", "13", "--size", "16", "--cases", "2",
                           "--raw", str(tmp_path / "a_file" / "raw"))
    assert code == 2
    assert "ERROR: Cannot write to" in err and "a_file" in err and "Nothing was written" in err
    assert tree(tmp_path) == before


def test_cli_too_few_cases_is_a_clean_error(folders, capsys, tmp_path):
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "synthetic", "-d", "12", "--size", "16", "--cases", "1")
    assert code == 2 and "ERROR:" in err
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------------------------- LiTS-117: MRC
def mrc_bytes(array: np.ndarray, mode: int, cell=(0.0, 0.0, 0.0), sampling=None, extended: bytes = b"") -> bytes:
    """An MRC file: 1024-byte header (nx, ny, nz, mode; mx, my, mz at 28; cell lengths at 40; nsymbt at 92),
    optional extended header, then the (nz, ny, nx) data little-endian."""
    nz, ny, nx = array.shape
    header = bytearray(1024)
    struct.pack_into("<4i", header, 0, nx, ny, nz, mode)
    struct.pack_into("<3i", header, 28, *(sampling if sampling is not None else (0, 0, 0)))
    struct.pack_into("<3f", header, 40, *cell)
    struct.pack_into("<i", header, 92, len(extended))
    struct.pack_into("<4s", header, 208, b"MAP ")
    dtype = {0: "<i1", 1: "<i2", 2: "<f4", 6: "<u2"}[mode]
    return bytes(header) + extended + np.ascontiguousarray(array).astype(dtype).tobytes()


def test_read_mrc_float32_and_uint16():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, 5, 6)).astype(np.float32) * 100
    array, spacing = read_mrc(mrc_bytes(image, 2))
    assert array.dtype == np.float32 and array.shape == (4, 5, 6)
    np.testing.assert_array_equal(array, image)
    assert spacing is None  # no cell dimensions in the header
    label = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint16)
    label[0, 0, 0] = 60000
    array, _ = read_mrc(mrc_bytes(label, 6))
    assert array.dtype == np.uint16
    np.testing.assert_array_equal(array, label)
    small = rng.integers(-300, 300, size=(2, 3, 4)).astype(np.int16)
    np.testing.assert_array_equal(read_mrc(mrc_bytes(small, 1))[0], small)


def test_read_mrc_extended_header_and_voxel_size():
    image = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    data = mrc_bytes(image, 2, cell=(5 * 0.8, 4 * 0.7, 3 * 2.5), sampling=(5, 4, 3), extended=b"\xff" * 96)
    array, spacing = read_mrc(data)
    np.testing.assert_array_equal(array, image)
    assert spacing == pytest.approx((2.5, 0.7, 0.8))  # (z, y, x), like the array
    # sampling differing from the grid size: voxel size = cell / m
    _, spacing = read_mrc(mrc_bytes(image, 2, cell=(10.0, 8.0, 6.0), sampling=(10, 4, 2)))
    assert spacing == pytest.approx((3.0, 2.0, 1.0))


def test_read_mrc_rejects_garbage():
    with pytest.raises(ValueError, match="1024"):
        read_mrc(b"\x00" * 100)
    with pytest.raises(ValueError, match="mode"):
        read_mrc(mrc_bytes(np.zeros((2, 2, 2), np.float32), 2)[:12] + struct.pack("<i", 12) +
                 mrc_bytes(np.zeros((2, 2, 2), np.float32), 2)[16:])
    with pytest.raises(ValueError):
        read_mrc(mrc_bytes(np.zeros((2, 2, 2), np.float32), 2)[:-4])  # truncated data


# ----------------------------------------------------------------------------------------------- LiTS-117: wheel
def fake_volume(shape=(128, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.normal(size=shape) * 50 + 60).astype(np.float32)
    image[:, 0, :] = -1000
    label = np.zeros(shape, np.uint16)
    label[:, 2:6, 2:6] = 1  # liver in every slab
    label[shape[0] // 3: shape[0] // 3 + 3, 3:5, 3:5] = 2
    image += np.arange(shape[0], dtype=np.float32)[:, None, None] * 1000  # slab position is visible in the values
    return image, label


def fake_wheel(path: Path, image, label, members=MEMBERS, cell=(0.0, 0.0, 0.0)) -> Path:
    nz, ny, nx = image.shape
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("liver_ct_segmentation_package/__init__.py", "")
        if "image" in members:
            z.writestr(members["image"], mrc_bytes(image, 2, cell=cell, sampling=(nx, ny, nz)))
        if "label" in members:
            z.writestr(members["label"], mrc_bytes(label, 6))
    return path


def test_load_volume_from_fake_wheel(tmp_path):
    image, label = fake_volume()
    wheel = fake_wheel(tmp_path / lits117.WHEEL, image, label)
    img, lab, spacing = load_volume(wheel)
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(lab, label)
    assert spacing == (1.0, 1.0, 1.0)  # no voxel size in the header: ~1 mm
    wheel = fake_wheel(tmp_path / "spaced.whl", image, label, cell=(8 * 0.8, 8 * 0.8, 128 * 2.0))
    assert load_volume(wheel)[2] == pytest.approx((2.0, 0.8, 0.8))


def test_create_lits117_dataset_from_fake_wheel(folders, tmp_path):
    image, label = fake_volume()
    wheel = fake_wheel(tmp_path / lits117.WHEEL, image, label, cell=(8 * 0.8, 8 * 0.8, 128 * 2.0))
    folder = create_lits117_dataset(117, wheel=wheel)
    assert folder == folders["nnUNet_raw"] / "Dataset117_LiTS117"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert meta["numTraining"] == 12 and meta["numTest"] == 4
    assert meta["file_ending"] == ".nii.gz" and meta["overwrite_image_reader_writer"] == "NibabelIO"
    train = sorted(p.name for p in (folder / "imagesTr").iterdir())
    test = sorted(p.name for p in (folder / "imagesTs").iterdir())
    assert test == [f"lits117_slab{i:02d}_0000.nii.gz" for i in (3, 7, 11, 15)]  # every 4th slab held out
    assert train == [f"lits117_slab{i:02d}_0000.nii.gz" for i in range(16) if i % 4 != 3]
    assert len(list((folder / "labelsTr").iterdir())) == 12 and len(list((folder / "labelsTs").iterdir())) == 4
    for i, split in [(0, "Tr"), (5, "Tr"), (15, "Ts")]:
        img, seg, spacing = read_case(folder, split, f"lits117_slab{i:02d}")
        assert img.shape == seg.shape == (1, 8, 8, 8)
        assert spacing == pytest.approx((2.0, 0.8, 0.8))
        np.testing.assert_array_equal(img[0], image[8 * i:8 * (i + 1)])
        np.testing.assert_array_equal(seg[0], label[8 * i:8 * (i + 1)])


def test_create_lits117_slab_and_test_every_options(folders, tmp_path):
    image, label = fake_volume()
    wheel = fake_wheel(tmp_path / "w.whl", image, label)
    folder = create_lits117_dataset(118, slab=32, test_every=2, wheel=wheel, name="Slabs")
    assert folder.name == "Dataset118_Slabs"
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["lits117_slab01_0000.nii.gz",
                                                                       "lits117_slab03_0000.nii.gz"]
    img, _, _ = read_case(folder, "Tr", "lits117_slab02")
    assert img.shape == (1, 32, 8, 8)
    np.testing.assert_array_equal(img[0], image[64:96])


def test_create_lits117_from_smaller_fake_volume(folders, tmp_path):
    """A 32^3 volume (not the real 128 slices): slabs of the given thickness, as many as fit."""
    image, label = fake_volume((32, 32, 32), seed=3)
    wheel = fake_wheel(tmp_path / "small.whl", image, label)
    folder = create_lits117_dataset(119, slab=8, wheel=wheel)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["lits117_slab03_0000.nii.gz"]
    img, seg, _ = read_case(folder, "Ts", "lits117_slab03")
    np.testing.assert_array_equal(img[0], image[24:32])
    np.testing.assert_array_equal(seg[0], label[24:32])


def test_cli_lits117_with_wheel(folders, capsys, tmp_path):
    image, label = fake_volume()
    wheel = fake_wheel(tmp_path / "w.whl", image, label)
    code, out, err = run_cli(capsys, "lits117", "-d", "120", "--wheel", str(wheel), "--slab", "16")
    assert code == 0, err
    folder = folders["nnUNet_raw"] / "Dataset120_LiTS117"
    assert str(folder) in out
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 6 and meta["numTest"] == 2
    assert meta["nnunet_prune"] == {"generator": "lits117", "slab": 16, "test_every": 4}


@pytest.mark.parametrize("args, message", [
    (["--slab", "3"], "--slab must divide 128"),
    (["--slab", "0"], "--slab must divide 128"),
    (["--slab", "256"], "--slab must divide 128"),
    (["--test-every", "1"], "--test-every must be at least 2"),
    (["--wheel", "{tmp}/nowhere.whl"], "no such file"),
    (["--wheel", "{tmp}/notazip.whl"], "is not the expected"),
    (["--wheel", "{tmp}/nolabel.whl"], "is not the expected"),
    (["--wheel", "{tmp}/shapes.whl"], "differ in shape"),
])
def test_cli_lits117_bad_input_touches_nothing(folders, capsys, tmp_path, args, message):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "notazip.whl").write_text("this is not a zip file")
    image, label = fake_volume((16, 4, 4))
    fake_wheel(wheels / "nolabel.whl", image, label, members={"image": MEMBERS["image"]})
    fake_wheel(wheels / "good.whl", image, label)
    with zipfile.ZipFile(wheels / "shapes.whl", "w") as z:
        z.writestr(MEMBERS["image"], mrc_bytes(image, 2))
        z.writestr(MEMBERS["label"], mrc_bytes(label[:8], 6))
    args = [a.format(tmp=wheels) for a in args]
    if "--wheel" not in args:
        args += ["--wheel", str(wheels / "good.whl")]
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "lits117", "-d", "121", *args)
    assert code == 2
    assert err.startswith("ERROR: ") and message in err
    assert tree(tmp_path) == before


def test_bad_wheels_raise_prune_error(tmp_path):
    (tmp_path / "text.whl").write_text("nope")
    with pytest.raises(NnUNetPruneError, match="not the expected"):
        load_volume(tmp_path / "text.whl")
    image, label = fake_volume((16, 4, 4))
    for missing in ("image", "label"):
        wheel = fake_wheel(tmp_path / f"no{missing}.whl", image, label,
                           members={k: v for k, v in MEMBERS.items() if k != missing})
        with pytest.raises(NnUNetPruneError, match="not the expected") as e:
            load_volume(wheel)
        assert MEMBERS[missing].rsplit("/", 1)[-1] in str(e.value)
    with pytest.raises(NnUNetPruneError, match="no such file"):
        fetch_wheel(tmp_path / "absent.whl")
    with pytest.raises(NnUNetPruneError, match="no such file"):
        fetch_wheel(tmp_path)  # a folder is not a wheel


def test_fetch_wheel_uses_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NNUNET_PRUNE_CACHE", str(tmp_path))
    (tmp_path / lits117.WHEEL).write_bytes(b"cached")
    assert fetch_wheel() == tmp_path / lits117.WHEEL
    given = tmp_path / "mine.whl"
    given.write_bytes(b"x")
    assert fetch_wheel(str(given)) == given


def test_fetch_wheel_offline_explains_what_to_do(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NNUNET_PRUNE_CACHE", str(cache))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "1")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(NnUNetPruneError) as e:
        fetch_wheel()
    message = str(e.value)
    assert "Could not download liver-ct-segmentation-package==1.6.0" in message
    assert "pip download --no-deps liver-ct-segmentation-package==1.6.0" in message
    assert "--wheel" in message and str(cache) in message
    assert "synthetic" in message  # the offline alternative
    assert not (cache / lits117.WHEEL).exists()


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.network
def test_real_lits117_wheel(folders, monkeypatch, tmp_path):
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable")
    monkeypatch.setenv("NNUNET_PRUNE_CACHE", str(tmp_path / "cache"))
    wheel = fetch_wheel()
    assert wheel.name == lits117.WHEEL and wheel.parent == tmp_path / "cache"
    image, label, spacing = load_volume(wheel)
    assert image.shape == label.shape == (128, 128, 128)
    assert image.dtype == np.float32
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert -1100 <= image.min() < -200 and 100 < image.max() <= 4000  # Hounsfield units
    assert float(np.median(image[label == 1])) > float(np.median(image[label == 0])) - 200
    assert len(spacing) == 3 and all(s > 0 for s in spacing)
    folder = create_lits117_dataset(130)  # from the cache now
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 12 and meta["numTest"] == 4
    cases = [(s, p.name[:-len("_0000.nii.gz")]) for s in ("Tr", "Ts") for p in (folder / f"images{s}").iterdir()]
    assert len(cases) == 16
    for split, identifier in cases:
        _, seg, _ = read_case(folder, split, identifier)
        assert seg.shape == (1, 8, 128, 128)
        assert (seg == 1).any(), identifier  # every slab contains liver
