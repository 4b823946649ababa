"""Checkpoint formats: segrt safetensors, mmsegmentation, NVlabs; clear errors on mismatch; method-specific extras
restored through registered checkpoint extensions, and refused by name when their extension is missing."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from segrt.export.model import extensions
from segrt.export.model.checkpoints import (
    detect_format,
    from_mmseg,
    from_nvlabs,
    load_checkpoint,
    random_model,
    save_checkpoint,
)
from segrt.export.model.segformer import SegFormer, SegFormerConfig
from segrt.runtime.errors import CheckpointError, ConfigError, ModelLoadError, SegrtError, UnsafeModelError


def to_nvlabs(state):
    """segrt -> original NVlabs key layout, written independently of the loader under test."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        parts = k.split(".")
        if k.startswith("encoder.stages."):
            s = int(parts[2]) + 1
            rest = ".".join(parts[3:])
            if rest.startswith("patch_embeddings.proj."):
                out[f"backbone.patch_embed{s}.proj.{parts[-1]}"] = v
            elif rest.startswith("patch_embeddings.layer_norm."):
                out[f"backbone.patch_embed{s}.norm.{parts[-1]}"] = v
            elif rest.startswith("layer_norm."):
                out[f"backbone.norm{s}.{parts[-1]}"] = v
            else:
                b = parts[4]
                sub = ".".join(parts[5:])
                for a, n in [("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
                             ("attention.q_proj.", "attn.q."), ("attention.o_proj.", "attn.proj."),
                             ("attention.sequence_reduction.sequence_reduction.", "attn.sr."),
                             ("attention.sequence_reduction.layer_norm.", "attn.norm."),
                             ("mlp.dwconv.", "mlp.dwconv.dwconv.")]:
                    if sub.startswith(a):
                        sub = n + sub[len(a):]
                if sub.startswith("attention.k_proj."):
                    kind = parts[-1]
                    vv = state[k.replace("k_proj", "v_proj")]
                    out[f"backbone.block{s}.{b}.attn.kv.{kind}"] = torch.cat([v, vv])
                    continue
                if sub.startswith("attention.v_proj."):
                    continue
                out[f"backbone.block{s}.{b}.{sub}"] = v
        else:
            k = k.replace("decode_head.linear_fuse.", "decode_head.linear_fuse.conv.")
            k = k.replace("decode_head.batch_norm.", "decode_head.linear_fuse.bn.")
            k = k.replace("decode_head.classifier.", "decode_head.linear_pred.")
            for i in range(4):
                k = k.replace(f"decode_head.linear_projections.{i}.proj.", f"decode_head.linear_c{i + 1}.proj.")
            out[k] = v
    return out


def to_mmseg(state):
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        parts = k.split(".")
        if k.startswith("encoder.stages."):
            s, rest = parts[2], ".".join(parts[3:])
            if rest.startswith("patch_embeddings."):
                sub = rest.split('.', 1)[1].replace('proj.', 'projection.').replace('layer_norm.', 'norm.')
                out[f"backbone.layers.{s}.0.{sub}"] = v
            elif rest.startswith("layer_norm."):
                out[f"backbone.layers.{s}.2.{parts[-1]}"] = v
            else:
                b, sub = parts[4], ".".join(parts[5:])
                pre = f"backbone.layers.{s}.1.{b}."
                if sub.startswith("attention.q_proj."):
                    kind = parts[-1]
                    qkv = [state[k], state[k.replace("q_proj", "k_proj")], state[k.replace("q_proj", "v_proj")]]
                    out[pre + f"attn.attn.in_proj_{kind}"] = torch.cat(qkv)
                    continue
                if sub.startswith(("attention.k_proj.", "attention.v_proj.")):
                    continue
                for a, n in [("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
                             ("attention.o_proj.", "attn.attn.out_proj."),
                             ("attention.sequence_reduction.sequence_reduction.", "attn.sr."),
                             ("attention.sequence_reduction.layer_norm.", "attn.norm."),
                             ("mlp.fc1.", "ffn.layers.0."), ("mlp.dwconv.", "ffn.layers.1."),
                             ("mlp.fc2.", "ffn.layers.4.")]:
                    if sub.startswith(a):
                        sub = n + sub[len(a):]
                if sub.startswith(("ffn.layers.0.weight", "ffn.layers.4.weight")):
                    v = v[:, :, None, None]
                out[pre + sub] = v
        else:
            if k.startswith("decode_head.linear_projections."):
                i, j, rest = parts[2], parts[3], ".".join(parts[4:])
                out[f"decode_head.convs.{i}.{'conv' if j == '0' else 'bn'}.{rest}"] = v
                continue
            k = k.replace("decode_head.linear_fuse.", "decode_head.fusion_conv.conv.")
            k = k.replace("decode_head.batch_norm.", "decode_head.fusion_conv.bn.")
            k = k.replace("decode_head.classifier.", "decode_head.conv_seg.")
            out[k] = v
    return out


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("fmt", ["nvlabs", "mmseg"])
def test_foreign_formats_load_to_the_same_function(fmt, tmp_path):
    torch.manual_seed(3)
    head = "mmseg" if fmt == "mmseg" else "hf"
    eps = 1e-6
    cfg = SegFormerConfig.from_variant("b0", 5, head_style=head, block_eps=eps,
                                       embed_eps=eps if fmt == "mmseg" else 1e-5)
    ref = SegFormer(cfg).eval()
    _randomise_bn(ref)
    state = (to_mmseg if fmt == "mmseg" else to_nvlabs)(ref.state_dict())
    assert detect_format(state) == fmt
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 3}}, path)
    loaded = load_checkpoint(path)
    assert loaded.model.config.head_style == head
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = loaded.model(x), ref(x)
    assert float((a - b).norm() / b.norm()) < 1e-5


def test_converters_cover_every_key():
    ref = SegFormer(SegFormerConfig.from_variant("b0", 5, head_style="mmseg"))
    expected = {k for k in ref.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(from_mmseg(to_mmseg(ref.state_dict()))) == expected
    ref = SegFormer(SegFormerConfig.from_variant("b0", 5))
    expected = {k for k in ref.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(from_nvlabs(to_nvlabs(ref.state_dict()))) == expected


def test_segrt_checkpoint_roundtrip_keeps_config_and_metadata(tmp_path):
    loaded = random_model("random:b0:4")
    loaded.metadata.classes = ["a", "b", "c", "d"]
    path = tmp_path / "m.safetensors"
    save_checkpoint(loaded.model, loaded.metadata, path)
    again = load_checkpoint(path)
    assert again.metadata.classes == ["a", "b", "c", "d"]
    assert again.model.config == loaded.model.config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.model(x), loaded.model(x))


def test_shape_mismatch_names_the_tensor(tmp_path):
    from safetensors.torch import save_file

    state = SegFormer(SegFormerConfig.from_variant("b0", 4)).state_dict()
    state["encoder.stages.1.blocks.0.mlp.fc1.weight"] = torch.zeros(256, 63)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="mlp.fc1.weight"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_missing_keys_are_listed(tmp_path):
    from safetensors.torch import save_file

    state = SegFormer(SegFormerConfig.from_variant("b0", 4)).state_dict()
    del state["decode_head.linear_fuse.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys.*linear_fuse"):
        load_checkpoint(tmp_path / "partial.safetensors")


def test_unreadable_and_unsafe_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(ModelLoadError):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")

    # An arbitrary pickled Python object (a fractions.Fraction, reduced through a global)
    # must be refused by weights_only loading, not executed.
    import fractions

    torch.save({"state_dict": {}, "obj": fractions.Fraction(1, 3)}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeModelError):
        load_checkpoint(tmp_path / "evil.pth")
    assert issubclass(UnsafeModelError, SegrtError)


def test_unrecognised_layout_is_a_checkpoint_error(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


# ----------------------------------------------------------------------------- checkpoint extensions


def _probe_restore(calls: list[str]):
    """A method-like extension: the checkpoint's weights include a module only it knows how to build."""

    def restore(model: SegFormer, extra_json: str) -> SegFormer:
        calls.append(extra_json)
        extended = copy.deepcopy(model)
        extended.probe = torch.nn.Linear(2, 3)
        return extended

    return restore


def _extended_checkpoint(tmp_path, key: str = "probe"):
    loaded = random_model("random:b0:4")
    model = _probe_restore([])(loaded.model, "")
    with torch.no_grad():
        model.probe.weight.fill_(0.25)
    loaded.metadata.extra = {**loaded.metadata.extra, key: '{"width": 3}', "notes": "not an extension"}
    path = tmp_path / "extended.safetensors"
    save_checkpoint(model, loaded.metadata, path)
    return path


def test_registered_extension_is_named_in_the_file_and_restores_its_modules(tmp_path, monkeypatch):
    from safetensors import safe_open

    calls: list[str] = []
    monkeypatch.setitem(extensions._RESTORERS, "probe", _probe_restore(calls))
    path = _extended_checkpoint(tmp_path)
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()[extensions.EXTENSIONS_KEY]) == ["probe"]  # "notes" is not registered
    loaded = load_checkpoint(path)
    assert calls == ['{"width": 3}']
    assert torch.equal(loaded.model.probe.weight, torch.full((3, 2), 0.25))


def test_unregistered_extension_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setitem(extensions._RESTORERS, "probe", _probe_restore([]))
    path = _extended_checkpoint(tmp_path)
    monkeypatch.delitem(extensions._RESTORERS, "probe")
    with pytest.raises(CheckpointError, match="'probe' extension, which is not registered"):
        load_checkpoint(path)


def test_extension_named_without_its_metadata_is_refused(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setitem(extensions._RESTORERS, "probe", _probe_restore([]))
    loaded = random_model("random:b0:4")
    header = {"segrt_config": loaded.model.config.to_json(), "segrt_metadata": loaded.metadata.to_json(),
              extensions.EXTENSIONS_KEY: json.dumps(["probe"])}
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(tmp_path / "m.safetensors"),
              metadata=header)
    with pytest.raises(CheckpointError, match="names the 'probe' extension but its metadata has no 'probe' entry"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_a_taken_extension_key_is_not_silently_replaced(monkeypatch):
    monkeypatch.setattr(extensions, "_RESTORERS", {})
    first = _probe_restore([])
    extensions.register_checkpoint_extension("probe", first)
    extensions.register_checkpoint_extension("probe", first)  # the same function again: a module imported twice
    with pytest.raises(ConfigError, match="already registered"):
        extensions.register_checkpoint_extension("probe", lambda model, text: model)


def test_checkpoint_io_imports_no_method():
    """The generic loader dispatches through the registry; only the composition root imports the methods."""
    import ast
    from pathlib import Path

    import segrt.export.model as model_package

    for source in sorted(Path(model_package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("segrt.export.methods", "segrt.export.training", "segrt.export.loading",
                                            "segrt.export.onnx_export")), f"{source.name} imports {name}"
