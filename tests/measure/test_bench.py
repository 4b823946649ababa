"""`segrt bench`: interleaving, ratios, skips, reports, peers. Speed itself is never asserted here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segrt.measure.bench import Candidate, Runner, Schedule, benchmark_size, segrt_candidate, summarize
from segrt.measure.report import markdown_table
from segrt.runtime.errors import BackendUnavailableError


def _fake(name: str, calls: list[str], work: int = 8, classes: int = 3, fixed=None) -> Candidate:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((work, work)).astype(np.float32)

    def load(size):
        def infer(x):
            calls.append(name)
            h, w = x.shape[2] // 4, x.shape[3] // 4
            np.dot(weights, weights)  # some real work, sized per candidate
            return rng.standard_normal((1, classes, h, w)).astype(np.float32)

        return Runner(infer, info={"backend": "fake", "threads": 1})

    return Candidate(name, "fake", load, fixed_size=fixed, macs=lambda size: work**3)


@pytest.fixture(scope="module")
def frame(camvid_frame):
    return camvid_frame


def test_runs_are_interleaved_after_warmup(frame):
    calls: list[str] = []
    schedule = Schedule()
    cands = [_fake(n, calls) for n in "ABC"]
    group = benchmark_size(cands, (32, 48), frame, runs=4, warmup=2, schedule=schedule)
    assert calls[:6] == ["A", "A", "B", "B", "C", "C"]  # warm-up right after each load
    assert schedule.order == ["A", "B", "C"] * 4
    # an untimed re-warm run before each timed one
    assert calls[6:] == [name for name in schedule.order for _ in range(2)]
    assert [r["name"] for r in group["results"]] == ["A", "B", "C"]
    assert all(len(r["latency_ms"]) and r["runs"] == 4 for r in group["results"])
    conditions = group["conditions"]  # the harness's record of how the numbers were measured
    assert conditions["rounds"] == 4 and conditions["rewarm"] == 1 and "interleaved" in conditions["order"]
    assert conditions["load_average_start"] is not None and conditions["load_average_end"] is not None


def test_ratios_are_against_the_first_candidate(frame):
    calls: list[str] = []
    group = benchmark_size([_fake("base", calls, 8), _fake("big", calls, 160)], (32, 48), frame, runs=3, warmup=1)
    first, second = group["results"]
    assert first["speedup_vs_first"] == 1.0
    assert second["speedup_vs_first"] == pytest.approx(first["latency_ms"]["p50"] / second["latency_ms"]["p50"])
    e2e = first["end_to_end_ms"]["p50"] / second["end_to_end_ms"]["p50"]
    assert second["end_to_end_speedup_vs_first"] == pytest.approx(e2e)
    for r in group["results"]:
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p95"] <= lat["max"]
        assert r["end_to_end_ms"]["p50"] >= lat["min"]
        assert set(r["stages_ms"]) == {"preprocess", "network", "postprocess"}
        assert r["gmacs_per_s"] == pytest.approx(r["macs"] / (lat["p50"] / 1000) / 1e9)


def test_skips_are_reported_not_raised(frame):
    calls: list[str] = []

    def unavailable(size):
        raise BackendUnavailableError("TensorRT is not installed")

    cands = [_fake("fixed", calls, fixed=(64, 64)), Candidate("trt", "tensorrt", unavailable), _fake("ok", calls)]
    group = benchmark_size(cands, (32, 48), frame, runs=2, warmup=0)
    assert [r["name"] for r in group["results"]] == ["ok"]
    reasons = {s["name"]: s["reason"] for s in group["skipped"]}
    assert "64x64" in reasons["fixed"] and "TensorRT is not installed" in reasons["trt"]
    assert group["results"][0]["speedup_vs_first"] == 1.0  # ratios start at the first one measured


def test_engine_without_tensorrt_is_a_clear_skip(tmp_path, frame):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    group = benchmark_size([segrt_candidate(engine)], (32, 48), frame, runs=1, warmup=0)
    assert group["results"] == []
    assert "TensorRT" in group["skipped"][0]["reason"] or "tensorrt" in group["skipped"][0]["reason"]


def test_onnx_model_reports_macs_memory_and_peak_share(b0_onnx, frame):
    from segrt.export.passes.macs import count_macs
    from segrt.measure.peak import numpy_probe

    cand = segrt_candidate(b0_onnx, threads=1, macs=lambda size: count_macs(b0_onnx, (1, 3, *size)).total)
    group = benchmark_size([cand], (256, 320), frame, runs=2, warmup=1, probes=[numpy_probe(256)])
    (r,) = group["results"]
    assert r["info"]["threads"] == 1 and r["info"]["backend"].startswith("onnxruntime")
    assert r["macs"] == count_macs(b0_onnx).total
    assert r["pct_of_peak"] == pytest.approx(100 * r["gmacs_per_s"] / group["peaks_gmacs_per_s"]["fp32"])
    assert r["memory_mb"]["load"] is not None and r["memory_mb"]["peak"] >= r["memory_mb"]["load"]
    table = markdown_table(group)
    assert table.count("\n|") >= 3 and r["name"] in table


def test_summarize_percentiles():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["p95"] > s["p50"]


def test_cli_writes_json_with_threads_and_ratios(b0_onnx, tmp_path):
    from typer.testing import CliRunner

    from segrt.cli import app

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", f"first={b0_onnx}", f"again={b0_onnx}", "--runs", "2", "--warmup", "1",
                                   "--threads", "1", "--no-peak", "--profile", "--json", str(out),
                                   "--markdown", str(tmp_path / "b.md"), "--camera-size", "240x320",
                                   "--camera-size", "480x640", "--cameras", "2", "--camera-frames", "3"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["settings"]["threads"] == 1 and report["settings"]["interleaved"] is True
    assert report["environment"]["cpu"]["logical_cpus"] >= 1
    (group,) = report["groups"]
    assert [r["name"] for r in group["results"]] == ["first", "again"]
    assert group["results"][0]["speedup_vs_first"] == 1.0
    assert (tmp_path / "b.md").read_text().startswith("**256x320**")
    profiles = group["kernel_profiles"]
    assert set(profiles) == {"first", "again"}
    assert {"Conv"} <= {o["op_type"] for o in profiles["first"]["op_types"]}
    assert profiles["first"]["integer_kernels"] == []  # a float model runs no integer kernels

    # End to end beside the network alone, for each model, at the camera sizes asked for, in one run.
    assert set(report["end_to_end"]) == {"first", "again"}
    e2e = report["end_to_end"]["first"]
    assert [r["camera"] for r in e2e["rows"]] == [[240, 320], [480, 640]]
    assert all(r["network_size"] == [256, 320] for r in e2e["rows"])  # the model's own size, whatever the camera
    for r in e2e["rows"]:
        assert r["e2e_ms"]["p50"] > 0 and r["ratio"] == r["e2e_ms"]["p50"] / r["network_ms"]["p50"]
    assert e2e["conditions"]["rounds"] == 2 and e2e["conditions"]["threads"] == 1
    # Several cameras: the first model only, every frame of every camera delivered.
    (multi,) = report["multicam"].values()
    assert multi["cameras"] == 2 and multi["frames_per_camera"] == 3 and multi["lost"] == 0
    assert multi["ratio"] > 0 and len(multi["per_camera"]) == 2
    assert all(p["batched"]["frames"] == 6 == p["sequential"]["frames"] for p in multi["per_round"])
    md = (tmp_path / "b.md").read_text()
    assert "| 480x640 | 256x320 |" in md and "one batched MultiStream" in md


def test_peers_need_a_checkpoint(b0_onnx, tmp_path):
    from segrt.commands.bench import build_candidates
    from segrt.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint"):
        build_candidates([str(b0_onnx)], "auto", 1, True, tmp_path, [])


def test_transformers_copy_is_the_same_network(random_b0, camvid_frame):
    """The transformers peer runs segrt's weights: every LayerNorm/BatchNorm perturbed so that a wrong
    key mapping cannot hide behind default initialisations."""
    import copy

    import torch

    from segrt.measure.peers import check_same_network, to_transformers

    model = copy.deepcopy(random_b0.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and ("norm" in name or "batch_norm" in name):
                tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.2)
    hf = to_transformers(model, random_b0.metadata)
    assert check_same_network(hf, model, [camvid_frame], random_b0.metadata, (128, 160)) < 1e-4
    assert hf.config.num_labels == len(random_b0.metadata.classes)


def test_peer_candidates_run_in_one_benchmark(tmp_path, camvid_frame):
    """transformers eager and its plain ONNX export next to segrt's PyTorch module, same weights."""
    from segrt.commands.bench import build_candidates

    cands = build_candidates(["random:b0:11"], "auto", 1, True, tmp_path, [camvid_frame])
    assert [c.kind for c in cands] == ["transformers", "onnxruntime", "pytorch"]
    group = benchmark_size(cands, (64, 96), camvid_frame, runs=1, warmup=1)
    assert len(group["results"]) == 3, group["skipped"]
    hf, plain, ours = group["results"]
    assert hf["info"]["max_rel_error_vs_segrt"] < 1e-4
    assert plain["info"]["backend"].endswith("(default session options)")
    assert hf["macs"] == ours["macs"] == plain["macs"]  # one network, counted three ways


def test_a_frame_form_model_is_benchmarked_by_its_network(camvid_frame):
    """The bundled model is frame form: the latency rows time its network on the prepared input (its end to
    end time is the camera-size section), never a float tensor fed to a uint8 frame input."""
    from segrt.measure.bench import benchmark_size, segrt_candidate
    from segrt.runtime.models import models_dir

    cand = segrt_candidate(models_dir() / "camvid-b0.onnx", name="bundled", threads=1)
    assert cand.note == "network of a frame-form model" and cand.fixed_size == (384, 512)
    result = benchmark_size([cand], (384, 512), camvid_frame, runs=2, warmup=1)
    row = result["results"][0]
    assert not result["skipped"] and row["note"] == cand.note and row["latency_ms"]["p50"] > 0
