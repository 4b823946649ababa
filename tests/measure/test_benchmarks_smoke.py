"""Every script in benchmarks/ runs end to end at a tiny setting (a few rows, 2 rounds, 2 CamVid val images, a
small input) and writes the report it promises. Numbers are checked for sanity, never for speed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def script(name: str):
    """Import benchmarks/NAME.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is being imported
    spec.loader.exec_module(module)
    return module


def report(folder: Path, stem: str) -> tuple[dict, str]:
    data = json.loads((folder / f"{stem}.json").read_text())
    return data, (folder / f"{stem}.md").read_text()


def method_report(folder: Path, stem: str, names: list[str], rounds: int = 4) -> tuple[dict, str]:
    """A method benchmark's report: the expected rows, timed by the harness with 1 thread, evaluated on CamVid."""
    data, md = report(folder, stem)
    rows = data["rows"]
    assert [r["name"] for r in rows] == names
    assert data["rounds"] == rounds  # --quick's setting
    assert_timed(rows, rounds)
    assert_accuracy(rows)
    assert_conditions(data["conditions"], rounds, 1)
    assert all(f"| {n} |" in md or f"| {n.split(' [')[0]} |" in md for n in names)
    return data, md


def assert_timed(rows: list[dict], rounds: int) -> None:
    """Latencies from the harness: one per round, positive, p50 their median, speed-up against the first row."""
    for r in rows:
        assert len(r["latencies_ms"]) == rounds and all(v > 0 for v in r["latencies_ms"])
        assert min(r["latencies_ms"]) - 0.01 <= r["p50_ms"] <= max(r["latencies_ms"]) + 0.01
        assert r["speedup"] == pytest.approx(rows[0]["p50_ms"] / r["p50_ms"])


def assert_conditions(conditions: dict, rounds: int, threads: int) -> None:
    assert conditions["rounds"] == rounds and conditions["threads"] == threads and conditions["rewarm"] == 1
    assert conditions["load_average_start"] and conditions["load_average_end"]


def assert_accuracy(rows: list[dict]) -> None:
    for r in rows:
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 < r["pixel_accuracy"] <= 1.0  # NaN fails both


def test_merging(camvid_root, tmp_path):
    res = script("merging").main(["--quick", "--sizes", "128", "--strategies", "fast", "--limit", "2", "--rounds",
                                  "2", "--threads", "1", "--data", str(camvid_root), "--out", str(tmp_path)])
    data, md = report(tmp_path, "merging")
    assert data == json.loads(json.dumps(res, default=str))
    rows = data["sizes"]["128x128"]
    assert [r["name"] for r in rows] == ["plain", "fast"]
    assert_timed(rows, 2)
    assert_accuracy(rows)
    assert_conditions(data["conditions"]["128x128"], 2, 1)
    assert rows[0]["agreement"] == 1.0 and 0.0 < rows[1]["agreement"] <= 1.0
    assert rows[0]["export_rel_error"] < 1e-4 and rows[1]["path"] == "fast-128x128.onnx"
    assert "| 128x128 | plain |" in md and "| 128x128 | fast |" in md
    assert (tmp_path / "merging.png").stat().st_size > 0


def test_pruning(camvid_root, tmp_path):
    script("pruning").main(["--quick", "--variants", "fold", "--size", "64x96", "--limit", "2", "--rounds", "2",
                            "--threads", "1", "--data", str(camvid_root), "--out", str(tmp_path)])
    data, md = method_report(tmp_path, "pruning-quick", ["bundled [fold]", "pruned-50 [fold]", "pruned-30 [fold]"])
    rows = data["rows"]
    assert rows[0]["gmacs"] > rows[1]["gmacs"] > rows[2]["gmacs"] > 0  # pruning removes MACs from the graph
    assert rows[0]["speedup_vs_fold"] == 1.0
    assert "| pruned-30 | fold |" in md
    assert (tmp_path / "pruning-quick.png").exists()


def test_gating(camvid_root, tmp_path):
    script("gating").main(["--quick", "--modes", "threshold", "--align", "1", "--limit", "2", "--threads", "1",
                           "--data", str(camvid_root), "--out", str(tmp_path)])
    data, _ = method_report(tmp_path, "gating-quick", ["bundled", "gated threshold"])
    rows = data["rows"]
    assert all(r["mean_ms"] > 0 for r in rows)
    assert data["compute"]["images"] == 2 and 0.0 < data["compute"]["kept_fraction"]["median"] < 1.0
    assert 0 < rows[1]["gmacs"] < rows[0]["gmacs"]  # gates skip Mix-FFN neurons


def test_early_exit(camvid_root, tmp_path):
    script("early_exit").main(["--quick", "--budgets", "--thresholds", "0.9", "--no-ceiling", "--limit", "2",
                               "--threads", "1", "--data", str(camvid_root), "--out", str(tmp_path)])
    data, md = method_report(tmp_path, "early_exit-quick", ["bundled (folded)", "threshold 0.9"])
    rows = data["rows"]
    exited = rows[1]["exited"]
    assert len(exited) == 2 and all(0.0 <= e <= 1.0 for e in exited)
    assert 0 < rows[1]["gmacs"] <= rows[0]["gmacs"] * 1.05  # the aux head costs a little, exits save
    assert "Where the MACs are" in md


def test_run_all(camvid_root, tmp_path):
    script("run_all").main(["--quick", "--merges", "--eval-limit", "2", "--runs", "2", "--calib-count", "2",
                            "--size", "64x96", "--threads", "1", "--data", str(camvid_root),
                            "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    data, md = report(tmp_path / "out", "headline")
    names = [r["name"] for r in data["rows"]]
    assert names == ["transformers (eager PyTorch)", "transformers -> ONNX Runtime", "segrt FP32", "segrt INT8"]
    assert data["group"]["conditions"]["rounds"] == 2 and data["group"]["conditions"]["threads"] == 1
    for r in data["rows"]:
        assert r["p50_ms"] > 0 and 0.0 <= r["miou"] <= 1.0
    assert data["rows"][0]["vs_eager"] == 1.0
    assert abs(data["rows"][2]["delta_miou_points"]) < 5  # same weights as eager, exported
    assert set(data["kernels"]) == {"transformers -> ONNX Runtime", "segrt FP32", "segrt INT8"}
    assert data["kernels"]["segrt INT8"]["integer_kernels"]  # the INT8 tier really runs integer kernels
    assert "| segrt INT8 |" in md
    # the roofline: peaks swept before the timing, every profiled tier split into compute and memory time
    sweep = data["group"]["peak_calibration"]
    assert sweep["gemm"] and data["group"]["bandwidth_gbs"] > 0
    assert data["group"]["peaks_gmacs_per_s"]["fp32"] >= max(g["gmacs_per_s"] for g in sweep["gemm"]
                                                              if g["precision"] == "fp32")
    by_name = {r["name"]: r for r in data["rows"]}
    for name in ("segrt FP32", "segrt INT8"):
        assert 0.0 < by_name[name]["compute_share"] < 1.0 and by_name[name]["compute_pct_of_roof"] > 0
    int8 = by_name["segrt INT8"]
    assert int8["int8_vs_fp32"] == pytest.approx(by_name["segrt FP32"]["p50_ms"] / int8["p50_ms"])
    assert data["goals"]["int8_vs_fp32"] == {"segrt INT8": pytest.approx(int8["int8_vs_fp32"])}
    assert (tmp_path / "out" / "roofline.png").stat().st_size > 0


def test_stream_bench(b0_onnx, tmp_path):
    res = script("stream_bench").main(["--model", str(b0_onnx), "--frames", "4", "--rounds", "2", "--threads", "1",
                                       "--out", str(tmp_path / "stream")])
    data = json.loads((tmp_path / "stream.json").read_text())
    assert data["ratio"] == pytest.approx(res["ratio"]) and data["ratio"] > 0
    assert len(data["per_round"]) == 2 and data["frames_per_pass"] == 4
    assert all(x["stream"]["frames"] == 4 and x["bare"]["frames"] == 4 for x in data["per_round"])
    assert data["conditions"]["rounds"] == 2 and data["conditions"]["rewarm"] == 0
    assert "| **median** |" in (tmp_path / "stream.md").read_text()


def test_soak(b0_onnx, tmp_path):
    script("soak").main(["--model", str(b0_onnx), "--frames", "30", "--warmup", "10", "--sample-every", "10",
                         "--out", str(tmp_path)])
    data = json.loads((tmp_path / "soak.json").read_text())
    assert data["frames_delivered"] == 30 and data["lost"] == [] and data["dropped"] == 0
    assert len(data["rss_mb_samples"]) == 3
    assert "| lost or out-of-order frames | 0 | 0 |" in (tmp_path / "soak.md").read_text()


def test_multicam(b0_onnx, tmp_path):
    res = script("multicam").main(["--model", str(b0_onnx), "--cameras", "3", "--frames", "4", "--rounds", "2",
                                   "--sizes", "240x320", "480x640", "--runs", "2", "--threads", "1",
                                   "--out", str(tmp_path / "multicam")])
    data, md = report(tmp_path, "multicam")
    multi = data["multicam"]
    assert multi["ratio"] == pytest.approx(res["multicam"]["ratio"]) and multi["ratio"] > 0
    assert multi["cameras"] == 3 and multi["frames_per_camera"] == 4 and multi["lost"] == 0
    assert all(p["batched"]["frames"] == 12 == p["sequential"]["frames"] for p in multi["per_round"])
    assert [c["camera"] for c in multi["per_camera"]] == [0, 1, 2]
    assert all(0 < c["latency_ms_p50"] <= c["latency_ms_p99"] for c in multi["per_camera"])
    cpu = multi["cpu"]  # how busy the cores were bounds what any scheduling could gain
    for mode in ("batched", "sequential"):
        assert 0 < cpu[mode]["busy"] <= 1.05 and cpu[mode]["cpu_ms_per_frame"] > 0
    assert cpu["ceiling"] == pytest.approx(1 / cpu["sequential"]["busy"])
    assert "cores kept busy" in md
    assert multi["conditions"]["rounds"] == 2 and multi["conditions"]["rewarm"] == 0
    rows = data["end_to_end"]["rows"]
    assert [r["camera"] for r in rows] == [[240, 320], [480, 640]] and all(r["ratio"] > 0 for r in rows)
    assert "| **ratio** (median of rounds) |" in md and "| 480x640 | 256x320 |" in md
    assert (tmp_path / "multicam.png").stat().st_size > 0


def test_headline_goals_skip_tiers_that_shrink_the_image():
    """merge-downsample feeds the network a half-size image: the fastest tier, listed, never the goal's best."""
    run_all = script("run_all")

    def row(name, ms, delta, reduces=False, int8_vs_fp32=None):
        return {"name": name, "p50_ms": ms, "delta_miou_points": delta, "vs_eager": 300 / ms, "vs_plain_ort": 150 / ms,
                "reduces_resolution": reduces, "int8_vs_fp32": int8_vs_fp32}

    rows = [row(run_all.EAGER, 300, 0.0), row(run_all.PLAIN, 150, 0.0), row("segrt FP32", 90, 0.0),
            row("segrt INT8", 60, -0.1, int8_vs_fp32=1.5), row("segrt merge-downsample FP32", 20, -0.2, True),
            row("segrt p30 FP32", 36, -1.5)]
    g = run_all.goals(rows)
    assert g["best"] == "segrt INT8" and not g["met_vs_plain_ort"] and g["met_int8"]
    rows[-1]["delta_miou_points"] = -0.9  # the student within a point now: 150 / 36 >= 4x
    g = run_all.goals(rows)
    assert g["best"] == "segrt p30 FP32" and g["met_vs_plain_ort"] and not g["met_vs_eager"]
    assert run_all.goals(rows[:2] + rows[4:5])["best"] is None


def test_headline_rows_mark_reduced_tiers_and_pair_int8_with_its_fp32_graph():
    """The wiring from tiers and a benchmark group to the rows the goals read: the downsample tier marked by its
    merge strategy, each INT8 tier paired with the FP32 tier of the same graph by name."""
    run_all = script("run_all")

    def result(name, ms, precision="fp32"):
        return {"name": name, "info": {"backend": "onnxruntime:cpu"}, "kind": "onnx", "precision": precision,
                "latency_ms": {"p50": ms, "p95": ms}, "end_to_end_ms": {"p50": ms + 1}, "throughput_fps": 1000 / ms,
                "gmacs": 1.0, "gmacs_per_s": 1.0, "pct_of_peak": 1.0, "peak_kind": precision,
                "memory_mb": {"peak": 10.0}}

    group = {"results": [result(run_all.EAGER, 300), result(run_all.PLAIN, 150), result("segrt FP32", 90),
                         result("segrt INT8", 60, "int8"), result("segrt merge-downsample FP32", 20),
                         result("segrt merge-downsample INT8", 25, "int8")]}
    tiers = [run_all.Tier("segrt FP32", Path("a"), "fp32", "none"),
             run_all.Tier("segrt INT8", Path("b"), "int8", "none"),
             run_all.Tier("segrt merge-downsample FP32", Path("c"), "fp32", "downsample"),
             run_all.Tier("segrt merge-downsample INT8", Path("d"), "int8", "downsample")]
    accuracy = {n: {"miou": 0.5} for n in [r["name"] for r in group["results"]]}
    rows = {r["name"]: r for r in run_all.headline_rows(group, accuracy, tiers)}
    assert [n for n, r in rows.items() if r["reduces_resolution"]] == ["segrt merge-downsample FP32",
                                                                       "segrt merge-downsample INT8"]
    assert rows["segrt INT8"]["int8_vs_fp32"] == pytest.approx(1.5)
    assert rows["segrt merge-downsample INT8"]["int8_vs_fp32"] == pytest.approx(0.8)
    assert rows["segrt FP32"]["int8_vs_fp32"] is None and rows["segrt FP32"]["compute_share"] is None
    assert run_all.goals(list(rows.values()))["best"] == "segrt INT8"


def test_batch_one(tmp_path):
    data = script("batch_one").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    written, md = report(tmp_path, "batch_one-quick")
    assert written == data
    (group,) = data["groups"]
    assert group["model"] == "segformer-tiny-frame.onnx" and group["batch_fixed"]
    assert [r["what"] for r in group["rows"]] == ["network", "frame 1280x720", "4 frames 1280x720"]
    for r in group["rows"]:  # every candidate timed, and each agreed with the plain session before it was
        assert all(r[f"{c}_ms"] > 0 for c in ("plain", "batch 1", "segrt")) and r["largest_difference"] <= 1e-3
    assert group["conditions"]["rewarm"] == 2 and "| network |" in md
    assert (tmp_path / "batch_one-quick.png").stat().st_size > 0


def test_post_forms(tmp_path):
    data = script("post_forms").main(["--quick", "--rounds", "2", "--threads", "1", "--out", str(tmp_path)])
    written, md = report(tmp_path, "post_forms_quick")
    assert written == data and [g["size"] for g in data["groups"]] == [[480, 640], [720, 1280]]
    for g in data["groups"]:  # every candidate timed; the frame graphs agree with the reference path
        assert all(g["p50_ms"][c] > 0 for c in script("post_forms").CANDIDATES)
        assert g["p50_ms"]["refine post"] == pytest.approx(
            g["p50_ms"]["frame refine"] - g["p50_ms"]["network"] - g["p50_ms"]["refine pre only"])
        assert g["agreement"]["frame refine"] >= 0.995 and g["agreement"]["frame dense"] >= 0.995
        assert g["conditions"]["rewarm"] == 2
    assert "| 1280x720 |" in md and "refine pre only ms" in md
    assert (tmp_path / "post_forms_quick.png").stat().st_size > 0
