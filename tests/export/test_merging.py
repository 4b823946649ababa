"""Token merging (Segformer++): the segrt ONNX ops are exact means with the claimed selections, every
strategy reduces the tokens it claims stage by stage, and merged exports match their PyTorch models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from segrt.export.methods.merging import ops as merge_ops
from segrt.export.methods.merging.model import (
    PRESETS,
    STRATEGIES,
    MergeConfig,
    Reduction,
    apply_merging,
    bipartite_merge,
    cell_partition,
    check_merge_fits,
    merge_config,
    merged_size,
    plan_tokens,
    recorded_counts,
)
from segrt.export.onnx_export import export_onnx, relative_error
from segrt.export.passes.merge_functions import merge_sums_form, with_merge_sums
from segrt.runtime.errors import ConfigError, ExportError
from segrt.runtime.preprocess import frames_to_input

SIZE = (160, 224)  # stage grids 40x56, 20x28, 10x14, 5x7: the last one exercises ceil-mode pooling


# ----------------------------------------------------------------------------- the ONNX ops on their own


def merge_graph(nd: int, ns: int, channels: int, r: int, opset: int = 17, sums_form: str = "elements"
                ) -> onnx.ModelProto:
    """One TokenMerge followed by TokenUnmerge, with the segrt local functions attached."""
    n = nd + ns
    nodes = [helper.make_node("TokenMerge", ["x", "x", "dst", "src"], ["merged", "slot"], domain="segrt", r=r),
             helper.make_node("TokenUnmerge", ["merged", "slot"], ["back"], domain="segrt")]
    graph = helper.make_graph(
        nodes, "merge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, n, channels]),
         helper.make_tensor_value_info("dst", TensorProto.INT64, [nd]),
         helper.make_tensor_value_info("src", TensorProto.INT64, [ns])],
        [helper.make_tensor_value_info("merged", TensorProto.FLOAT, [2, n - r, channels]),
         helper.make_tensor_value_info("slot", TensorProto.INT64, [2, n]),
         helper.make_tensor_value_info("back", TensorProto.FLOAT, [2, n, channels])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset)])
    return merge_ops.attach_local_functions(model, sums_form)


def clustered_tokens(n: int, channels: int, rng) -> np.ndarray:
    """Tokens around a few directions, so that many sources have a clearly most similar destination."""
    centres = rng.standard_normal((6, channels))
    x = centres[rng.integers(0, 6, size=(2, n))] + 0.3 * rng.standard_normal((2, n, channels))
    return x.astype(np.float32)


@pytest.mark.parametrize("nd,ns,r", [
    (16, 48, 20),      # merged set selected directly
    (16, 48, 40),      # kept set is smaller: selected instead
    (16, 48, 48),      # every source merged
    (256, 3840, 3276),  # HQ stage 3 at 1024x1024: 3840 sources, over TensorRT's TopK limit if sorted whole
    (100, 9900, 5000),  # a 5000-token selection: two TopK rounds
])
@pytest.mark.parametrize("sums_form", ["elements", "dense"])  # portable body / ONNX Runtime CPU body
def test_token_merge_op_is_a_true_mean_of_the_best_matches(nd, ns, r, sums_form):
    rng = np.random.default_rng(nd + ns + r)
    c = 8
    perm = rng.permutation(nd + ns)
    dst, src = np.sort(perm[:nd]), np.sort(perm[nd:])
    x = clustered_tokens(nd + ns, c, rng)
    model = merge_graph(nd, ns, c, r, sums_form=sums_form)
    onnx.checker.check_model(model, full_check=True)
    assert merge_sums_form(model) == sums_form
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    merged, slot, back = sess.run(None, {"x": x, "dst": dst, "src": src})
    assert merged.shape == (2, nd + ns - r, c)

    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    for b in range(2):
        # destinations keep their own slots, in order
        np.testing.assert_array_equal(slot[b, dst], np.arange(nd))
        # exactly r sources are merged, each into its most similar destination ...
        scores = unit[b, src] @ unit[b, dst].T
        src_slot = slot[b, src]
        is_merged = src_slot < nd
        assert is_merged.sum() == r
        np.testing.assert_array_equal(src_slot[is_merged], scores.argmax(1)[is_merged])
        # ... and they are the r sources with the highest similarity
        best = scores.max(1)
        if 0 < r < ns:
            assert best[is_merged].min() >= best[~is_merged].max() - 1e-6
        # kept sources occupy the slots after the destinations, in position order
        np.testing.assert_array_equal(src_slot[~is_merged], nd + np.arange(ns - r))
        # every merged token is the plain mean of the tokens mapped to it (the destination included)
        sums = np.zeros((nd + ns - r, c))
        np.add.at(sums, slot[b], x[b].astype(np.float64))
        counts = np.bincount(slot[b], minlength=nd + ns - r)[:, None]
        np.testing.assert_allclose(merged[b], sums / counts, rtol=1e-5, atol=1e-6)
        # unmerge hands every position the output of the token it went into
        np.testing.assert_array_equal(back[b], merged[b][slot[b]])

    # the PyTorch op (what the exported model is verified against) makes the same choices
    tm, ts = merge_ops.token_merge(*(torch.from_numpy(a) for a in (x, x, dst, src)), r)
    np.testing.assert_array_equal(ts.numpy(), slot)
    np.testing.assert_allclose(tm.numpy(), merged, rtol=1e-5, atol=1e-6)


def test_cpu_merge_body_is_deterministic_across_threads():
    """A body whose sums depend on thread scheduling (ScatterND "add" in ONNX Runtime's CPU kernel) gave wrong
    sums in some runs: the CPU body must give the same bits every run and match the portable one."""
    nd, ns, c, r = 256, 768, 160, 600
    rng = np.random.default_rng(3)
    perm = rng.permutation(nd + ns)
    feed = {"x": rng.standard_normal((2, nd + ns, c)).astype(np.float32), "dst": np.sort(perm[:nd]),
            "src": np.sort(perm[nd:])}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    portable = ort.InferenceSession(merge_graph(nd, ns, c, r).SerializeToString(), options,
                                    providers=["CPUExecutionProvider"]).run(None, feed)[0]
    cpu = ort.InferenceSession(merge_graph(nd, ns, c, r, sums_form="dense").SerializeToString(), options,
                               providers=["CPUExecutionProvider"])
    first = cpu.run(None, feed)[0]
    np.testing.assert_allclose(first, portable, rtol=1e-5, atol=1e-5)
    for _ in range(20):
        np.testing.assert_array_equal(cpu.run(None, feed)[0], first)


@pytest.mark.parametrize("sums_form", ["elements", "dense"])
def test_function_bodies_use_portable_reductions_only(sums_form):
    for fn in merge_ops.function_protos(17, sums_form):
        for node in fn.node:
            assert node.domain in ("", "ai.onnx")
            # ScatterND "add" races in ONNX Runtime's threaded CPU kernel: never in a body
            assert node.op_type != "ScatterND"
            if node.op_type == "ScatterElements":
                reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")
                assert reduction in ("none", "add"), "reduction 'mean' is dropped by exporters: sum/count only"


def test_oversized_selection_is_refused_not_silently_sorted():
    merge_ops.check_merge_size(3840, 3276)
    with pytest.raises(ConfigError, match="TopK"):
        merge_ops.check_merge_size(20000, 10000)


# ----------------------------------------------------------------------------- token counts


def test_presets_reach_the_published_token_counts():
    # the Segformer++ numbers on a 32x32 key/value grid (1024x1024 input, stages 1-2)
    assert merged_size(32, 32, PRESETS["hq"].stage(0).keys_values) == 410
    assert merged_size(32, 32, PRESETS["fast"].stage(0).keys_values) == 103
    kv = torch.randn(1, 32 * 32, 16)
    merged, _ = bipartite_merge(kv, kv, (32, 32), PRESETS["hq"].stage(0).keys_values)
    assert merged.shape[1] == 410
    from segrt.export.model.segformer import SegFormerConfig

    cfg = SegFormerConfig.from_variant("b0", 19)
    hq = plan_tokens(cfg, "hq", (1024, 1024))
    assert [p.keys_values[1] for p in hq[:2]] == [410, 410]
    assert [p.queries[1] for p in hq[2:]] == [820, 205]
    fast = plan_tokens(cfg, "fast", (1024, 1024))
    assert [p.keys_values[1] for p in fast[:2]] == [103, 103]
    assert [p.queries[1] for p in fast[2:]] == [410, 103]
    pooled = plan_tokens(cfg, "2x2", (1024, 1024))
    assert [p.queries for p in pooled] == [(65536, 16384), (16384, 4096), (4096, 1024), (1024, 256)]


def test_cell_partition_takes_the_top_left_of_full_cells():
    dst, src = cell_partition(5, 7, (2, 2))
    assert sorted(np.concatenate([dst, src]).tolist()) == list(range(35))
    assert dst.tolist() == [0, 2, 4, 14, 16, 18]  # rows 0 and 2, cols 0, 2, 4; row 4 and col 6 are leftovers


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "none"])
def test_every_strategy_reduces_the_tokens_it_claims(strategy, random_b0, camvid_frame):
    model = random_b0.model
    merged = apply_merging(model, strategy)
    x = torch.from_numpy(frames_to_input([camvid_frame], SIZE, random_b0.metadata.mean, random_b0.metadata.std))
    with torch.no_grad():
        ref, out = model(x), merged(x)
    config = PRESETS[strategy]
    if strategy == "downsample":
        assert out.shape[2:] == (SIZE[0] // 8, SIZE[1] // 8)  # stride 4 on a half-size input
        return
    assert out.shape == ref.shape
    assert not torch.allclose(out, ref, atol=1e-4), f"{strategy} changed nothing: an inert preset"
    plan = plan_tokens(model.config, config, SIZE)
    for stage, (counts, p) in enumerate(zip(recorded_counts(merged), plan)):
        setting = config.stage(stage)
        for block_counts in counts:
            assert block_counts is not None, f"stage {stage + 1} is not merged"
            assert block_counts.queries == p.queries and block_counts.keys_values == p.keys_values
            if setting.queries is not None:
                assert block_counts.queries[1] < block_counts.queries[0]
            if setting.keys_values is not None:
                assert block_counts.keys_values[1] < block_counts.keys_values[0]


def test_strategy_none_is_the_unmodified_model(random_b0, camvid_frame):
    merged = apply_merging(random_b0.model, "none")
    assert all(b.attention.token_merge is None for s in merged.encoder.stages for b in s.blocks)
    x = torch.from_numpy(frames_to_input([camvid_frame], SIZE, random_b0.metadata.mean, random_b0.metadata.std))
    with torch.no_grad():
        assert torch.equal(merged(x), random_b0.model(x))


# ----------------------------------------------------------------------------- configuration


def test_custom_config_round_trips_through_json(tmp_path):
    text = json.dumps({"stages": [{"kv": {"ratio": 0.5, "cell": [2, 2]}}, {"q": {"method": "pool", "cell": 2}},
                                  {"q": {"ratio": 0.7, "cell": [4, 4]}, "kv": {"ratio": 0.3}}], "downsample": 1})
    config = merge_config(text)
    assert config.stage(2).queries == Reduction("bsm", 0.7, (4, 4))
    assert config.stage(3).queries is None and config.stage(3).keys_values is None
    path = tmp_path / "merge.json"
    path.write_text(config.to_json())
    assert merge_config(str(path)) == config
    assert merge_config("HQ") == PRESETS["hq"]


@pytest.mark.parametrize("bad", [
    "hx",
    '{"stages": [{"kv": {"ratio": 1.0}}]}',
    '{"stages": [{"kv": {"method": "pool"}}]}',
    '{"stages": [{"queries": {}}]}',
    '{"stages": [{"q": {"cell": [0, 2]}}]}',
    '{"downsample": 0}',
])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ConfigError):
        merge_config(bad)


def test_too_many_stages_are_refused(random_b0):
    with pytest.raises(ConfigError, match=r"stages\[4\] is one of 8 stage entries; the model has 4"):
        apply_merging(random_b0.model, MergeConfig(stages=(PRESETS["hq"].stages * 2)))


# ----------------------------------------------------------------------------- config against the model


@pytest.fixture(scope="module")
def b0_config():
    from segrt.export.model.segformer import SegFormerConfig

    return SegFormerConfig.from_variant("b0", 11)


README_EXAMPLE = '{"stages": [{"kv": {"ratio": 0.6, "cell": [2, 2]}}, {}, {"q": {"ratio": 0.8, "cell": [4, 4]}}]}'


@pytest.mark.parametrize("size", [(512, 512), (1024, 1024), SIZE])
@pytest.mark.parametrize("strategy", [*STRATEGIES, README_EXAMPLE])
def test_presets_and_the_readme_example_fit_the_model(b0_config, strategy, size):
    config = check_merge_fits(b0_config, strategy, size)
    assert config == merge_config(strategy)
    for plan, i in zip(plan_tokens(b0_config, config, size), range(4)):  # every listed reduction merges
        setting = config.stage(i)
        assert (plan.queries[1] < plan.queries[0]) == (setting.queries is not None)
        assert (plan.keys_values[1] < plan.keys_values[0]) == (setting.keys_values is not None)


@pytest.mark.parametrize(("text", "size", "message"), [
    ('{"stages": [{"q": {"ratio": 0.5, "cell": [100000, 100000]}}]}', (512, 512),
     r"stages\[0\]\.q\.cell 100000x100000 is larger than the 128x128 token grid of stage 1 at the 512x512"),
    ('{"stages": [{}, {}, {}, {"kv": {"ratio": 0.5, "cell": [2, 2]}}]}', (32, 32),
     r"stages\[3\]\.kv\.cell 2x2 is larger than the 1x1 token grid of stage 4 at the 32x32 export size"),
    ('{"stages": [{}, {}, {}, {"q": {"method": "pool", "cell": [1, 1]}}]}', (512, 512),
     r"stages\[3\]\.q\.cell 1x1 pools nothing on the 16x16 token grid of stage 4"),
    ('{"stages": [{}, {}, {}, {"q": {"ratio": 0.003, "cell": [2, 2]}}]}', (512, 512),
     r"stages\[3\]\.q\.ratio 0\.003 merges no token of the 16x16 token grid of stage 4"),
    ('{"stages": [{"kv": {"ratio": 0.5, "cell": [1, 32]}}]}', (512, 512),
     r"stages\[0\]\.kv\.cell 1x32 is larger than the 16x16 token grid of stage 1"),
    ('{"stages": [{}, {}, {}, {}, {}, {}, {}, {}, {}, {}]}', (512, 512),
     r"stages\[4\] is one of 10 stage entries; the model has 4 stages"),
    ('{"downsample": 1024}', (512, 512), r"downsample 1024 leaves no tokens in stage 1"),
])
def test_merges_that_merge_nothing_are_refused_naming_the_key_and_grid(b0_config, text, size, message):
    merge_config(text)  # well-formed on its own: only the model's grids at this size rule it out
    with pytest.raises(ConfigError, match=message):
        check_merge_fits(b0_config, text, size)
    with pytest.raises(ConfigError, match=message):
        plan_tokens(b0_config, text, size)  # what `segrt export --merge` prints before exporting


def test_apply_merging_checks_the_export_size(random_b0):
    text = '{"stages": [{"q": {"ratio": 0.5, "cell": [64, 64]}}]}'
    apply_merging(random_b0.model, text)  # no size: only the stage count can be checked
    with pytest.raises(ConfigError, match=r"stages\[0\]\.q\.cell 64x64 is larger than the 40x56 token grid"):
        apply_merging(random_b0.model, text, size=SIZE)
    apply_merging(random_b0.model, text, size=(256, 256))  # a 64x64 grid holds one cell


@pytest.mark.parametrize("text", ['{"stages": [null]}', '{"stages": [{}, null, {}]}'])
def test_null_stage_entries_are_refused(text):
    with pytest.raises(ConfigError, match=r"stages\[\d\] is null; write \{\} for a stage without merging"):
        merge_config(text)


# ----------------------------------------------------------------------------- exported graphs


@pytest.fixture(scope="module")
def hq_export(tmp_path_factory, random_b0, camvid_frame):
    merged = apply_merging(random_b0.model, "hq")
    path = tmp_path_factory.mktemp("merge") / "hq.onnx"
    result = export_onnx(merged, random_b0.metadata, path, size=SIZE, verify_images=[camvid_frame])
    return merged, result


def run_onnx(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_hq_export_has_segrt_local_functions_and_matches_its_model(hq_export, random_b0, camvid_root):
    import cv2

    merged, result = hq_export
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert {(f.domain, f.name) for f in proto.functions} == {("segrt", "TokenMerge"), ("segrt", "TokenUnmerge")}
    assert merge_sums_form(proto) == "dense"  # segrt export's default: the body ONNX Runtime's CPU runs fastest
    ops = [(n.domain, n.op_type) for n in proto.graph.node]
    blocks = sum(random_b0.model.config.depths)
    assert ops.count(("segrt", "TokenMerge")) == blocks  # one merge per block, recomputed every block
    assert ops.count(("segrt", "TokenUnmerge")) == 4  # query merging in stages 3-4, two blocks each
    frame = cv2.imread(str(sorted((camvid_root / "val").glob("*.png"))[50]), cv2.IMREAD_COLOR)
    x = frames_to_input([frame], SIZE, random_b0.metadata.mean, random_b0.metadata.std)
    with torch.no_grad():
        expected = merged(torch.from_numpy(x)).numpy()
    assert relative_error(run_onnx(str(result.path), x), expected) < 1e-4
    portable, changed = with_merge_sums(proto, "elements")  # what TensorRT files get: the same function
    assert changed and merge_sums_form(portable) == "elements"
    assert relative_error(run_onnx(portable, x), expected) < 1e-4


def test_macs_do_not_count_the_cpu_merge_bookkeeping(hq_export):
    from segrt.export.passes.macs import count_macs

    _, result = hq_export
    cpu = onnx.load(str(result.path))
    portable, changed = with_merge_sums(cpu, "elements")
    assert changed and count_macs(cpu).total == count_macs(portable).total


def test_a_scatternd_merge_body_is_swapped_out_everywhere():
    """segrt wrote a ScatterND "add" body for a few commits (it races in ONNX Runtime's threaded CPU kernel): a
    file carrying it is a CPU-form file, and made portable like one."""
    from segrt.export.passes.cpu_form import is_cpu_form, to_portable_ops

    model = merge_graph(16, 48, 8, 20)
    body = next(f for f in model.functions if f.name == "TokenMerge")
    body.node.append(helper.make_node("ScatterND", ["x", "slot", "x"], ["stale"], reduction="add"))
    assert merge_sums_form(model) == "nd" and is_cpu_form(model)
    portable = to_portable_ops(model)
    assert merge_sums_form(portable) == "elements" and not is_cpu_form(portable)
    # index sets that are graph inputs can be fed larger than at export: never the dense body for them
    assert with_merge_sums(portable, "dense") == (portable, False)


def test_tensorrt_bundles_get_the_portable_merge_body(hq_export, tmp_path):
    from segrt.engines.bundle import write_bundle
    from segrt.engines.plan import BuildRequest
    from segrt.engines.targets import get_target

    _, result = hq_export
    bundle = write_bundle(result.path, tmp_path, get_target("desktop"), BuildRequest("desktop", tensorrt="10.3"))
    written = onnx.load(str(tmp_path / result.path.name))
    assert merge_sums_form(written) == "elements"
    assert bundle.ok, "".join(r.to_text() for r in bundle.reports)  # no ScatterND reduction error


def test_inlined_merge_ops_are_plain_standard_ops(hq_export, random_b0, camvid_frame):
    merged, result = hq_export
    inlined = merge_ops.inline_merge_ops(onnx.load(str(result.path)))
    onnx.checker.check_model(inlined, full_check=True)
    assert not inlined.functions
    assert all(n.domain in ("", "ai.onnx") for n in inlined.graph.node)
    assert all(o.domain in ("", "ai.onnx") for o in inlined.opset_import)
    assert not any(n.op_type == "ScatterND" for n in inlined.graph.node)  # inlined for any runtime: portable
    constants = {t.name: numpy_helper.to_array(t) for t in inlined.graph.initializer}
    topk = [n for n in inlined.graph.node if n.op_type == "TopK"]
    assert topk and all(n.input[1] in constants and int(constants[n.input[1]].max()) < 3840 for n in topk)
    x = frames_to_input([camvid_frame], SIZE, random_b0.metadata.mean, random_b0.metadata.std)
    with torch.no_grad():
        expected = merged(torch.from_numpy(x)).numpy()
    assert relative_error(run_onnx(inlined, x), expected) < 1e-4


@pytest.mark.parametrize("strategy", ["2x2", "downsample"])
def test_standard_op_strategies_export_and_match_their_model(strategy, tmp_path, random_b0, camvid_frame):
    merged = apply_merging(random_b0.model, strategy)
    result = export_onnx(merged, random_b0.metadata, tmp_path / f"{strategy}.onnx", size=SIZE,
                         verify_images=[camvid_frame])
    assert result.max_rel_error < 1e-4
    proto = onnx.load(str(result.path))
    assert not proto.functions and all(n.domain in ("", "ai.onnx") for n in proto.graph.node)


def test_matching_needs_a_fixed_input_size(tmp_path, random_b0):
    with pytest.raises(ExportError, match="fixed input size"):
        export_onnx(apply_merging(random_b0.model, "hq"), random_b0.metadata, tmp_path / "dyn.onnx",
                    size=(128, 160), dynamic=True)
