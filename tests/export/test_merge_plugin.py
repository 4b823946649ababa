"""Token merging as a TensorRT plugin: the Triton kernel of ``segrt::TokenMerge`` gives the same matches and merged
tokens as segrt's PyTorch merging and as the ONNX function body in ONNX Runtime, and ``segrt export --merge-ops
plugin`` writes plugin nodes without function bodies that ONNX Runtime refuses with MissingPluginError.

"Same matches": identical decisions on B0 at 512x512 and on exact ties; at 1024x1024 (stage 3, 3840 sources) a
few decisions differ between any two of the three implementations, each a tie to float32 rounding (alternatives
within 1e-6 in float64), as ONNX Runtime already differs from PyTorch (``model.MATCHING_TOLERANCE``).

The kernel runs in Triton's interpreter, which must be switched on before triton is imported, so the comparisons
run in one subprocess (``python -m segrt.export.methods.merging.kernel_check``). Default run: B0 at 512x512 for
every bipartite strategy (hq, fast, and a low-ratio config that selects the merged set instead of the kept set),
B0 hq at 1024x1024 (stage 3: 4096 tokens), and exact ties (~35 s in all). B2 and the rest of 1024x1024:
``python benchmarks/merge_kernel_matrix.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from segrt.export.methods.merging import kernel_check
from segrt.export.methods.merging.model import PRESETS, _stage_grids, cell_partition, merge_config, merge_count
from segrt.export.methods.merging.plugin_form import PLUGIN_ATTRIBUTES, plugin_nodes, to_plugin_form
from segrt.export.model.segformer import SegFormerConfig
from segrt.runtime.errors import ExportError, MissingPluginError

CASES = ("b0:512:hq", "b0:512:fast", "b0:512:low", "b0:1024:hq", "ties")


def expected_shapes(case: str) -> set[tuple[int, int, int, int]]:
    """(tokens, channels, sources, merged away) of every bipartite merge the model runs, from its config."""
    variant, size, strategy = case.split(":")
    cfg = SegFormerConfig.from_variant(variant, 11)
    config = merge_config(kernel_check.LOW_RATIO if strategy == "low" else PRESETS[strategy])
    shapes = set()
    for stage, grid, kv_grid in _stage_grids(cfg, config, (int(size), int(size))):
        setting = config.stage(stage)
        for reduction, (h, w) in ((setting.queries, grid), (setting.keys_values, kv_grid)):
            if reduction is not None and reduction.method == "bsm":
                _, src = cell_partition(h, w, reduction.cell)
                shapes.add((h * w, cfg.widths[stage], len(src), merge_count(h * w, len(src), reduction.ratio)))
    return shapes


@pytest.fixture(scope="module")
def kernel_results(camvid_root):
    pytest.importorskip("triton")
    frame = sorted((camvid_root / "val").glob("*.png"))[0]
    run = subprocess.run([sys.executable, "-m", "segrt.export.methods.merging.kernel_check", str(frame), *CASES],
                         capture_output=True, text=True, timeout=900, check=False)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert rows, run.stderr[-3000:]
    return rows


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_pytorch_and_the_onnx_body(kernel_results, case):
    rows = [r for r in kernel_results if r["case"] == case]
    if case == "ties":
        # metric tokens drawn from 6 vectors whose dot products are exact: merged set selected (r=60) and kept
        # set selected (r=180), two seeds each
        assert sorted(r["shape"][3] for r in rows) == [60, 60, 180, 180]
    else:
        assert {tuple(r["shape"]) for r in rows} == expected_shapes(case)  # every stage's merge was compared
    for r in rows:
        for name in ("triton", "onnxruntime"):
            result = r[name]
            # every decision that differs from PyTorch is a tie to float32 rounding, and every merged row whose
            # members agree is within 1e-5
            assert result["ok"] and result["merged_error"] <= kernel_check.MERGED_TOLERANCE, r
            if case != "b0:1024:hq":
                assert result["identical"], r  # same merged set, same destinations, every row compared
            else:  # smooth upscaled frames: a handful of near-ties among 3840 sources (ONNX Runtime has them too)
                n, _, _, r_merged = r["shape"]
                assert result["decisions_differing"] <= 10 and result["rows_compared"] >= 0.98 * (n - r_merged), r


def test_the_large_case_is_hq_stage_3_at_1024():
    assert (4096, 160, 3840, 3276) in expected_shapes("b0:1024:hq")  # over TensorRT's TopK limit if sorted whole
    assert all(n <= 1024 for n, *_ in expected_shapes("b0:512:fast"))


def test_the_kernel_on_cpu_needs_the_interpreter():
    """In this process triton (if installed) was not put in interpreter mode: a clear refusal, no crash."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this session runs Triton's interpreter")
    from segrt.export.methods.merging import triton_kernel
    from segrt.runtime.errors import BackendUnavailableError

    call = kernel_check.tied_call(16, 32, (2, 2), 60)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        triton_kernel.token_merge(call.x, call.metric, call.dst_index, call.src_index, call.r)


# ----------------------------------------------------------------------------- the plugin form of an export


def segrt_cli(capsys, *args: str) -> tuple[int, str, str]:
    from segrt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture(scope="module")
def plugin_export(tmp_path_factory):
    from segrt.cli import main

    path = tmp_path_factory.mktemp("plugin") / "hq-plugin.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "random:b0:11", "--size", "160x224", "--merge", "hq", "--merge-ops", "plugin", "-o", str(path)])
    assert exit_info.value.code in (0, None)
    return path


def test_export_writes_plugin_nodes_without_function_bodies(plugin_export, random_b0):
    proto = onnx.load(str(plugin_export))
    onnx.checker.check_model(proto, full_check=True)
    assert not proto.functions  # nothing a parser could inline instead of the plugin
    merges = plugin_nodes(proto)
    assert len(merges) == sum(random_b0.model.config.depths)  # one per block, as in the function form
    for node in merges:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert (node.domain, node.op_type) == ("segrt", "TokenMerge")
        assert attrs["plugin_namespace"] == b"segrt" and attrs["plugin_version"] == b"1" and attrs["aot"] == 1
        assert attrs["r"] > 0 and len(node.input) == 4 and len(node.output) == 2
    assert set(PLUGIN_ATTRIBUTES) <= {a.name for a in merges[0].attribute}
    # TokenUnmerge became its Gather body: query merging in stages 3-4, two blocks each
    assert not [n for n in proto.graph.node if n.op_type == "TokenUnmerge"]
    assert sum(n.op_type == "GatherElements" for n in proto.graph.node) == 4
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("segrt", 1)}


def test_onnxruntime_refuses_the_plugin_form_with_missing_plugin_error(plugin_export):
    from segrt.runtime.engine import Engine

    with pytest.raises(MissingPluginError, match="TokenMerge"):
        Engine(plugin_export)


def test_the_plugin_form_is_not_applied_twice_or_to_graphs_without_merging(plugin_export):
    with pytest.raises(ExportError, match="already plugin nodes"):
        to_plugin_form(onnx.load(str(plugin_export)))
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(ExportError, match="no segrt.TokenMerge"):
        to_plugin_form(empty)


@pytest.mark.parametrize("args,needle", [
    (["--merge", "2x2", "--merge-ops", "plugin"], "no bipartite matching"),
    (["--merge", "hq", "--merge-ops", "plugin", "--inline-merge-ops"], "contradict"),
    (["--merge", "hq", "--merge-ops", "plugin", "--precision", "fp16"], "FP32"),
    (["--merge", "hq", "--merge-ops", "kernel"], "--merge-ops"),
])
def test_plugin_form_requests_that_cannot_work_are_refused(capsys, tmp_path, args, needle):
    code, out, err = segrt_cli(capsys, "export", "random:b0:11", "-o", tmp_path / "m.onnx", *args)
    assert code == 2 and needle in err and "Traceback" not in err + out, err
    assert not (tmp_path / "m.onnx").exists()
