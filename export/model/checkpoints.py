"""Load SegFormer checkpoints from every format users bring, and save segrt's own.

Formats:
- segrt: one ``.safetensors`` file whose ``__metadata__`` holds the architecture and class metadata.
- Hugging Face: a folder with ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``, or the
  weight file alone; transformers 4.x key names (``encoder.block.N.M.attention.self.query``) and
  5.x names (``stages.N.blocks.M.attention.q_proj``).
- mmsegmentation: ``state_dict`` with ``backbone.layers.N.{0,1,2}`` and ``decode_head.convs``.
- NVlabs (original SegFormer repo): ``patch_embedN``/``blockN``/``normN`` and ``decode_head.linear_cN``.

Pickled ``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never arbitrary objects. A pickle that needs more is refused with
:class:`UnsafeModelError` unless the caller passes ``trust_pickle=True`` (``--trust-pickle``), which
unpickles it fully and so runs whatever code it carries: only for files from a source you trust.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from segrt.export.model.extensions import EXTENSIONS_KEY, declared_extensions, extensions_in, restore_extensions
from segrt.export.model.segformer import VARIANTS, SegFormer, SegFormerConfig
from segrt.runtime.errors import CheckpointError, ModelLoadError, UnsafeModelError
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.sinks import writing

CONFIG_KEY = "segrt_config"
META_KEY = "segrt_metadata"


@dataclass
class LoadedModel:
    model: SegFormer
    metadata: ModelMetadata
    source: str
    sha256: str


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- segrt native


def save_checkpoint(model: SegFormer, metadata: ModelMetadata, path: str | Path,
                    dtype: torch.dtype | None = None) -> None:
    """Weights plus everything needed to rebuild the model, in one safetensors file."""
    from safetensors.torch import save_file

    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and not k.endswith(("running_mean", "running_var")):
            v = v.to(dtype)
        state[k] = v.contiguous()
    header = {CONFIG_KEY: model.config.to_json(), META_KEY: metadata.to_json()}
    extensions = extensions_in(metadata.extra)
    if extensions:  # method modules the weights need (gates...): named so a loader without them refuses the file
        header[EXTENSIONS_KEY] = json.dumps(extensions)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with writing(path, "checkpoint"):
        save_file(state, str(path), metadata=header)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError variants
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    return tensors, meta


def _read_pickle(path: Path, trust_pickle: bool = False) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc)
        if not ("weights_only" in msg or "Unsupported global" in msg):
            raise ModelLoadError(f"{path}: cannot read checkpoint ({exc})") from exc
        if not trust_pickle:
            raise UnsafeModelError(
                f"{path}: the checkpoint contains pickled Python objects beyond tensors; segrt only loads "
                "tensors (weights_only=True). Convert it to safetensors in a trusted environment, or pass "
                "--trust-pickle (trust_pickle=True) if you trust whoever made the file: unpickling runs its code."
            ) from exc
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ModelLoadError(f"{path}: cannot read checkpoint ({exc2})") from exc2
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    for key in ("state_dict", "model", "module"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_pickle(path, trust_pickle), {}


# ----------------------------------------------------------------------------- format detection and renames

_HF4_RENAMES = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"encoder.stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"encoder.stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)\.", r"encoder.stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"layer_norm_1\.", "layernorm_before."),
    (r"layer_norm_2\.", "layernorm_after."),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def from_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("segformer."): v for k, v in state.items()}
    state = {("encoder." + k if k.startswith("stages.") else k): v for k, v in state.items()}
    state = _rename(state, _HF4_RENAMES)
    # transformers 5.x: mlp.dwconv.dwconv -> our mlp.dwconv
    return {k.replace("mlp.dwconv.dwconv.", "mlp.dwconv."): v for k, v in state.items()
            if not k.endswith("num_batches_tracked")}


def from_mmseg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("auxiliary_head"):
            continue
        m = re.match(r"backbone\.layers\.(\d+)\.(\d+)\.(.*)", key)
        if m:
            s, part, rest = m.groups()
            base = f"encoder.stages.{s}."
            if part == "0":
                rest = rest.replace("projection.", "proj.").replace("norm.", "layer_norm.")
                out[base + "patch_embeddings." + rest] = v
            elif part == "2":
                out[base + "layer_norm." + rest] = v
            else:
                b, rest = rest.split(".", 1)
                pre = f"{base}blocks.{b}."
                if rest.startswith("attn.attn.in_proj_"):
                    kind = rest.rsplit("_", 1)[1]  # weight / bias
                    q, k, vv = v.chunk(3, dim=0)
                    out[pre + f"attention.q_proj.{kind}"] = q
                    out[pre + f"attention.k_proj.{kind}"] = k
                    out[pre + f"attention.v_proj.{kind}"] = vv
                    continue
                for a, b2 in [("attn.attn.out_proj.", "attention.o_proj."),
                              ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
                              ("attn.norm.", "attention.sequence_reduction.layer_norm."),
                              ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                              ("ffn.layers.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.dwconv."),
                              ("ffn.layers.4.", "mlp.fc2.")]:
                    if rest.startswith(a):
                        rest = b2 + rest[len(a):]
                        break
                if rest.startswith(("mlp.fc1.weight", "mlp.fc2.weight")):
                    v = v.flatten(1)  # 1x1 convs in mmseg, Linear here
                out[pre + rest] = v
            continue
        m = re.match(r"decode_head\.convs\.(\d+)\.(conv|bn)\.(.*)", key)
        if m:
            i, kind, rest = m.groups()
            out[f"decode_head.linear_projections.{i}.{0 if kind == 'conv' else 1}.{rest}"] = v
            continue
        key = key.replace("decode_head.fusion_conv.conv.", "decode_head.linear_fuse.")
        key = key.replace("decode_head.fusion_conv.bn.", "decode_head.batch_norm.")
        key = key.replace("decode_head.conv_seg.", "decode_head.classifier.")
        out[key] = v
    return out


def from_nvlabs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        if key.endswith("num_batches_tracked") or key.startswith(("head.", "auxiliary_head")):
            continue
        key = key.removeprefix("backbone.")
        m = re.match(r"patch_embed(\d)\.(proj|norm)\.(.*)", key)
        if m:
            s, kind, rest = m.groups()
            out[f"encoder.stages.{int(s) - 1}.patch_embeddings.{'proj' if kind == 'proj' else 'layer_norm'}.{rest}"] = v
            continue
        m = re.match(r"norm(\d)\.(.*)", key)
        if m:
            out[f"encoder.stages.{int(m.group(1)) - 1}.layer_norm.{m.group(2)}"] = v
            continue
        m = re.match(r"block(\d)\.(\d+)\.(.*)", key)
        if m:
            s, b, rest = m.groups()
            pre = f"encoder.stages.{int(s) - 1}.blocks.{b}."
            if rest.startswith("attn.kv."):
                kind = rest.rsplit(".", 1)[1]
                k, vv = v.chunk(2, dim=0)
                out[pre + f"attention.k_proj.{kind}"] = k
                out[pre + f"attention.v_proj.{kind}"] = vv
                continue
            for a, b2 in [("attn.q.", "attention.q_proj."), ("attn.proj.", "attention.o_proj."),
                          ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
                          ("attn.norm.", "attention.sequence_reduction.layer_norm."),
                          ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                          ("mlp.fc1.", "mlp.fc1."), ("mlp.dwconv.dwconv.", "mlp.dwconv."), ("mlp.fc2.", "mlp.fc2.")]:
                if rest.startswith(a):
                    rest = b2 + rest[len(a):]
                    break
            out[pre + rest] = v
            continue
        m = re.match(r"decode_head\.linear_c(\d)\.proj\.(.*)", key)
        if m:
            out[f"decode_head.linear_projections.{int(m.group(1)) - 1}.proj.{m.group(2)}"] = v
            continue
        key = key.replace("decode_head.linear_fuse.conv.", "decode_head.linear_fuse.")
        key = key.replace("decode_head.linear_fuse.bn.", "decode_head.batch_norm.")
        key = key.replace("decode_head.linear_pred.", "decode_head.classifier.")
        if not key.startswith("decode_head."):
            key = "encoder." + key
        out[key] = v
    return out


def detect_format(state: dict[str, torch.Tensor]) -> str:
    keys = list(state)
    if any(k.startswith("encoder.stages.") for k in keys) and any(".attention.q_proj." in k for k in keys) \
            and not any(k.startswith("segformer.") for k in keys):
        return "segrt"
    if any(k.startswith("backbone.layers.") for k in keys):
        return "mmseg"
    if any(re.match(r"(backbone\.)?(patch_embed\d|block\d)\.", k) for k in keys):
        return "nvlabs"
    if any(k.startswith(("segformer.", "encoder.block.", "encoder.patch_embeddings.", "stages.")) for k in keys):
        return "huggingface"
    raise CheckpointError("unrecognised checkpoint: no SegFormer key layout (segrt, Hugging Face, mmsegmentation, "
                          "NVlabs) matches")


CONVERTERS = {"segrt": lambda s: s, "huggingface": from_huggingface, "mmseg": from_mmseg, "nvlabs": from_nvlabs}


# ----------------------------------------------------------------------------- architecture inference


def infer_config(state: dict[str, torch.Tensor], num_classes: int | None = None, fmt: str = "segrt") -> SegFormerConfig:
    """Rebuild the architecture from tensor shapes (for checkpoints that do not carry a config)."""
    widths, depths, heads_guess, srs, patches = [], [], [], [], []
    s = 0
    while f"encoder.stages.{s}.patch_embeddings.proj.weight" in state:
        w = state[f"encoder.stages.{s}.patch_embeddings.proj.weight"]
        widths.append(w.shape[0])
        patches.append(w.shape[2])
        d = 0
        while f"encoder.stages.{s}.blocks.{d}.attention.q_proj.weight" in state:
            d += 1
        depths.append(d)
        sr = state.get(f"encoder.stages.{s}.blocks.0.attention.sequence_reduction.sequence_reduction.weight")
        srs.append(sr.shape[2] if sr is not None else 1)
        s += 1
    if not widths:
        raise CheckpointError("checkpoint has no encoder stages (encoder.stages.N.patch_embeddings.proj.weight)")
    # Head counts are not visible in shapes: match a published variant, else use MiT's 32-channel heads.
    variant = next((name for name, v in VARIANTS.items() if tuple(v["widths"]) == tuple(widths)
                    and tuple(v["depths"]) == tuple(depths)), "custom")
    heads_guess = [max(1, w // 32) for w in widths]
    cls_w = state.get("decode_head.classifier.weight")
    if cls_w is None:
        raise CheckpointError("checkpoint has no decode head (decode_head.classifier.weight); "
                              "segrt needs a segmentation model")
    hidden = [[state[f"encoder.stages.{s}.blocks.{b}.mlp.fc1.weight"].shape[0] for b in range(depths[s])]
              for s in range(len(widths))]
    ratios = [hidden[s][0] // widths[s] for s in range(len(widths))]
    dense = all(h == widths[s] * ratios[s] for s in range(len(widths)) for h in hidden[s])
    attn = [[state[f"encoder.stages.{s}.blocks.{b}.attention.q_proj.weight"].shape[0] for b in range(depths[s])]
            for s in range(len(widths))]
    attn_dense = all(a == widths[s] for s in range(len(widths)) for a in attn[s])
    mmseg_head = "decode_head.linear_projections.0.0.weight" in state
    eps = 1e-6 if fmt in ("mmseg", "nvlabs") else 1e-5
    return SegFormerConfig(
        num_classes=num_classes or cls_w.shape[0], widths=tuple(widths), depths=tuple(depths), heads=tuple(heads_guess),
        sr_ratios=tuple(srs), mlp_ratios=tuple(ratios), patch_sizes=tuple(patches),
        decoder_dim=cls_w.shape[1], head_style="mmseg" if mmseg_head else "hf",
        block_eps=eps, embed_eps=1e-6 if fmt == "mmseg" else 1e-5,
        mlp_hidden=None if dense else hidden, attn_dims=None if attn_dense else attn, variant=variant,
    )


def load_state_into(model: SegFormer, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - {k for k in expected if k.endswith("num_batches_tracked")})
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        more = " ..." if len(unexpected) > 6 else ""
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:6])}{more}")
    for k in sorted(set(state) & set(expected)):
        if tuple(state[k].shape) != tuple(expected[k].shape):
            problems.append(f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)} "
                            f"vs model {tuple(expected[k].shape)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not fit the architecture:\n  " + "\n  ".join(problems[:12]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)


def _hf_config(folder: Path) -> tuple[dict | None, Path | None]:
    cfg = folder / "config.json"
    raw = json.loads(cfg.read_text()) if cfg.exists() else None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return raw, folder / name
    return raw, None


def _config_from_hf(raw: dict) -> tuple[SegFormerConfig, list[str] | None]:
    cfg = SegFormerConfig(
        num_classes=len(raw.get("id2label", {})) or raw.get("num_labels", 2),
        widths=tuple(raw["hidden_sizes"]), depths=tuple(raw["depths"]), heads=tuple(raw["num_attention_heads"]),
        sr_ratios=tuple(raw["sr_ratios"]), mlp_ratios=tuple(raw["mlp_ratios"]), patch_sizes=tuple(raw["patch_sizes"]),
        strides=tuple(raw["strides"]), decoder_dim=raw.get("decoder_hidden_size", 256),
        in_channels=raw.get("num_channels", 3),
    )
    names = None
    if "id2label" in raw:
        names = [raw["id2label"][str(i)] for i in range(len(raw["id2label"]))]
    return cfg, names


def load_checkpoint(path: str | Path, classes: list[str] | None = None, *, trust_pickle: bool = False) -> LoadedModel:
    """Load any supported checkpoint (file or Hugging Face folder) into a segrt SegFormer.

    ``trust_pickle`` allows pickles that hold more than tensors (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    hf_raw = None
    weights = path
    if path.is_dir():
        hf_raw, found = _hf_config(path)
        if found is None:
            raise ModelLoadError(f"{path}: folder has no model.safetensors or pytorch_model.bin")
        weights = found
    elif path.parent.joinpath("config.json").exists() and path.name in ("model.safetensors", "pytorch_model.bin"):
        hf_raw, _ = _hf_config(path.parent)
    state, file_meta = read_state_dict(weights, trust_pickle)
    if not state:
        raise CheckpointError(f"{weights}: no tensors in checkpoint")
    fmt = detect_format(state)
    state = CONVERTERS[fmt](state)
    meta = None
    if CONFIG_KEY in file_meta:
        cfg = SegFormerConfig.from_json(file_meta[CONFIG_KEY])
        if META_KEY in file_meta:
            meta = ModelMetadata.from_json(file_meta[META_KEY])
    elif hf_raw is not None:
        cfg, names = _config_from_hf(hf_raw)
        classes = classes or names
    else:
        cfg = infer_config(state, fmt=fmt)
    # method-specific modules whose weights are in the file (gates...) come from registered extensions
    extra = meta.extra if meta is not None else {}
    extensions = declared_extensions(file_meta, extra, str(weights))
    model = restore_extensions(SegFormer(cfg), extensions, extra, str(weights))
    load_state_into(model, state, str(weights))
    model.eval()
    if meta is None:
        names = classes or [f"class_{i}" for i in range(cfg.num_classes)]
        if len(names) != cfg.num_classes:
            raise CheckpointError(f"{len(names)} class names given for a {cfg.num_classes}-class checkpoint")
        meta = ModelMetadata(classes=list(names))
    digest = file_sha256(weights)
    meta.source_sha256 = meta.source_sha256 or digest
    meta.source = meta.source or str(path)
    return LoadedModel(model, meta, str(path), digest)


def random_model(spec: str) -> LoadedModel:
    """``random:b0:11`` -> a randomly initialised (seeded) model, for tests and smoke runs."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "random":
        raise ModelLoadError(f"bad random model spec {spec!r}; expected random:VARIANT[:NUM_CLASSES]")
    num_classes = int(parts[2]) if len(parts) == 3 else 19
    torch.manual_seed(0)
    model = SegFormer(SegFormerConfig.from_variant(parts[1], num_classes)).eval()
    meta = ModelMetadata(classes=[f"class_{i}" for i in range(num_classes)], source=spec,
                         source_sha256=hashlib.sha256(spec.encode()).hexdigest())
    return LoadedModel(model, meta, spec, meta.source_sha256)
