"""The roofline: peak probes that compute what they time, best-of peaks that a model cannot exceed, the
compute/memory split of a profiled model, and its plot. Speed itself is never asserted here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segrt.measure.bench import benchmark_size, machine_peaks, segrt_candidate
from segrt.measure.peak import default_probes, measure_peaks, ort_fp32_probe, ort_int8_probe, ort_qlinear_probe
from segrt.measure.profile import profile_kernels
from segrt.measure.roofline import COMPUTE_OPS, op_class_split, plot_roofline, summary_line
from segrt.runtime.errors import ConfigError

TINY_SIZE = (256, 320)


@pytest.fixture(scope="module")
def tiny_macs(tiny_onnx) -> int:
    from segrt.export.passes.macs import count_macs

    return count_macs(tiny_onnx, (1, 3, *TINY_SIZE)).total


@pytest.fixture(scope="module")
def tiny_profile(tiny_onnx, camvid_frame):
    from segrt.runtime.preprocess import frames_to_input

    return profile_kernels(tiny_onnx, frames_to_input([camvid_frame], TINY_SIZE, (0.485, 0.456, 0.406),
                                                      (0.229, 0.224, 0.225)), runs=3, threads=2, warmup=1)


def test_onnxruntime_probes_compute_the_product_they_time():
    n = 96
    rng = np.random.default_rng(0)
    b, a = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    _, out = ort_fp32_probe(1, n).load()()
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-3)
    rng = np.random.default_rng(0)
    b8 = rng.integers(-127, 128, (n, n), dtype=np.int8)
    a8 = rng.integers(0, 256, (n, n), dtype=np.uint8)
    _, out = ort_int8_probe(1, n).load()()
    np.testing.assert_array_equal(out, a8.astype(np.int32) @ b8.astype(np.int32))
    step = ort_qlinear_probe(1, n).load()
    feeds, out = step()
    assert out.dtype == np.uint8 and out.shape == (n, n) and len(np.unique(out)) > 10  # a real, varied result


def test_peak_sweep_returns_sane_best_of_numbers_per_precision():
    r = measure_peaks(1, sizes=(64, 128), stream_mb=(1,), repeats=2)
    assert {row["n"] for row in r["gemm"]} == {64, 128} and len(r["gemm"]) == 8
    assert set(r["peaks_gmacs_per_s"]) == {"fp32", "int8"}
    for kind, peak in r["peaks_gmacs_per_s"].items():
        rows = [row for row in r["gemm"] if row["precision"] == kind]
        assert peak == max(row["gmacs_per_s"] for row in rows) and math.isfinite(peak) and peak > 0
        assert r["best"][kind] in {row["name"] for row in rows}
    assert len(r["bandwidth"]) == 3 and all(row["gbs"] > 0 for row in r["bandwidth"])
    assert r["bandwidth_gbs"] == max(row["gbs"] for row in r["bandwidth"])
    with pytest.raises(ConfigError):
        measure_peaks(1, sizes=(), repeats=1)


def test_machine_peaks_take_the_best_run_and_the_calibration():
    probes = [{"precision": "fp32", "gmacs_per_s": 50.0, "best_gmacs_per_s": 80.0},
              {"precision": "int8", "gmacs_per_s": 300.0}]
    assert machine_peaks(probes) == {"fp32": 80.0, "int8": 300.0}
    assert machine_peaks(probes, {"fp32": 120.0, "int8": 100.0}) == {"fp32": 120.0, "int8": 300.0}


def test_tiny_model_stays_below_the_measured_fp32_peak(tiny_onnx, camvid_frame, tiny_macs):
    calibration = measure_peaks(2, sizes=(1024, 2048), stream_mb=(16,), repeats=2)
    cand = segrt_candidate(tiny_onnx, threads=2, macs=lambda size: tiny_macs)
    group = benchmark_size([cand], TINY_SIZE, camvid_frame, runs=3, warmup=1, threads=2, calibration=calibration,
                           probes=default_probes(2, {"fp32": 1024, "int8": 1024}))
    (r,) = group["results"]
    assert group["peaks_gmacs_per_s"]["fp32"] >= calibration["peaks_gmacs_per_s"]["fp32"]
    assert group["bandwidth_gbs"] == calibration["bandwidth_gbs"] and group["peak_calibration"] is calibration
    assert r["pct_of_peak"] == pytest.approx(100 * r["gmacs_per_s"] / group["peaks_gmacs_per_s"]["fp32"])
    assert 0 < r["pct_of_peak"] < 100
    # `segrt bench --profile/--roofline` keeps each profiled model's split in its group
    from rich.console import Console

    from segrt.commands.bench import report_profiles

    console = Console(record=True, width=300)
    report_profiles(console, [cand], camvid_frame, 2, group)
    split = group["roofline"][r["name"]]
    assert split["macs"] == tiny_macs and split["peak_gmacs_per_s"] == group["peaks_gmacs_per_s"]["fp32"]
    assert split["compute"]["share"] + split["memory"]["share"] == pytest.approx(1.0)
    assert "of the fp32 peak" in console.export_text()


def test_op_class_split_covers_all_profiled_kernel_time(tiny_profile, tiny_macs):
    split = op_class_split(tiny_profile, tiny_macs, "fp32", {"fp32": 100.0, "int8": 400.0}, 20.0)
    c, m = split["compute"], split["memory"]
    assert c["share"] + m["share"] == pytest.approx(1.0)
    assert c["ms_per_run"] + m["ms_per_run"] == pytest.approx(tiny_profile.total_ms_per_run, rel=1e-9)
    assert c["op_types"] and set(c["op_types"]) <= COMPUTE_OPS and not set(m["op_types"]) & COMPUTE_OPS
    assert {"Conv", "MatMul", "FusedMatMul", "Gemm"} & set(c["op_types"])
    assert m["op_types"] and m["share"] > 0  # LayerNorm, Softmax, Resize ... take time too
    assert c["gmacs_per_s"] == pytest.approx(tiny_macs / (c["ms_per_run"] / 1000) / 1e9)
    assert c["bytes_per_run"] > 0 and m["bytes_per_run"] > 0 and m["gbs"] > 0
    assert c["attainable_gmacs_per_s"] == pytest.approx(min(100.0, c["intensity_macs_per_byte"] * 20.0))
    assert "compute" in summary_line("tiny", split)


def test_roofline_plot_is_written(tiny_profile, tiny_macs, tmp_path):
    pytest.importorskip("matplotlib")
    peaks = {"fp32": 100.0, "int8": 400.0}
    splits = {"tiny fp32": op_class_split(tiny_profile, tiny_macs, "fp32", peaks, 20.0),
              "tiny as int8": op_class_split(tiny_profile, tiny_macs, "int8", peaks, 20.0)}
    path = tmp_path / "roofline.png"
    assert plot_roofline(splits, peaks, 20.0, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
