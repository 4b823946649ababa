"""What users would run instead of segrt, built from the same weights, for side-by-side benchmarks.

- :func:`to_transformers`: ``transformers.SegformerForSemanticSegmentation`` in eager PyTorch, the
  way most users run SegFormer today.
- :func:`export_plain_onnx`: that model through ``torch.onnx.export(..., dynamo=True)`` with no
  segrt rewrites, i.e. what a generic exporter gives; run by ONNX Runtime with default options.

Both are checked against segrt's own PyTorch model, so a speed ratio is never a comparison between
different networks.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from segrt.export.model.checkpoints import from_huggingface
from segrt.export.model.segformer import SegFormer
from segrt.runtime.errors import ConfigError, ExportError, ExportVerificationError
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input

TOLERANCE = 1e-4


def transformers_config(model: SegFormer, metadata: ModelMetadata):
    """The ``transformers.SegformerConfig`` of a segrt SegFormer, or ConfigError if it has no equivalent."""
    from transformers import SegformerConfig

    cfg = model.config
    reasons = []
    if cfg.head_style != "hf":
        reasons.append(f"decode head style {cfg.head_style!r} (transformers has the 'hf' head only)")
    if cfg.mlp_hidden is not None or cfg.attn_dims is not None or cfg.block_heads is not None:
        reasons.append("per-block pruned widths")
    if cfg.block_eps != 1e-5 or cfg.embed_eps != 1e-5:
        reasons.append(f"LayerNorm eps {cfg.block_eps:g}/{cfg.embed_eps:g} (transformers uses 1e-5)")
    if reasons:
        raise ConfigError("this model has no transformers equivalent: " + "; ".join(reasons))
    names = metadata.classes
    return SegformerConfig(
        num_channels=cfg.in_channels, num_encoder_blocks=len(cfg.widths), depths=list(cfg.depths),
        sr_ratios=list(cfg.sr_ratios), hidden_sizes=list(cfg.widths), patch_sizes=list(cfg.patch_sizes),
        strides=list(cfg.strides), num_attention_heads=list(cfg.heads), mlp_ratios=list(cfg.mlp_ratios),
        decoder_hidden_size=cfg.decoder_dim, num_labels=len(names),
        id2label={i: n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)},
    )


def to_transformers(model: SegFormer, metadata: ModelMetadata):
    """Copy a segrt SegFormer's weights into ``SegformerForSemanticSegmentation`` (eval mode).

    The key mapping is the inverse of the loader's: every transformers key is passed through
    :func:`segrt.export.model.checkpoints.from_huggingface` to find the segrt key it comes from, so the
    two directions cannot drift apart.
    """
    from transformers import SegformerForSemanticSegmentation

    hf = SegformerForSemanticSegmentation(transformers_config(model, metadata)).eval()
    ours = model.state_dict()
    hf_keys = [k for k in hf.state_dict() if not k.endswith("num_batches_tracked")]
    mapping = {k: next(iter(from_huggingface({k: torch.empty(0)}))) for k in hf_keys}
    missing = [k for k, ours_key in mapping.items() if ours_key not in ours]
    if missing:
        raise ExportError(f"no segrt weight for transformers keys: {', '.join(missing[:6])}")
    hf.load_state_dict({k: ours[v] for k, v in mapping.items()}, strict=False)
    return hf


class LogitsOnly(torch.nn.Module):
    """transformers returns a ModelOutput; exporters and benchmarks want the logits tensor."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=pixel_values).logits


@torch.inference_mode()
def check_same_network(hf_model, model: SegFormer, frames: list[np.ndarray], metadata: ModelMetadata,
                       size: tuple[int, int], tolerance: float = TOLERANCE) -> float:
    """Largest relative error between transformers and segrt logits on real frames."""
    worst = 0.0
    for frame in frames:
        x = torch.from_numpy(frames_to_input([frame], size, metadata.mean, metadata.std))
        ref = model(x)
        got = hf_model(pixel_values=x).logits
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
        worst = max(worst, err)
    if not worst <= tolerance:
        raise ExportVerificationError(f"transformers copy differs from the segrt model: relative error {worst:.3g}")
    return worst


def export_plain_onnx(hf_model, out: str | Path, size: tuple[int, int]) -> Path:
    """``torch.onnx.export(model, (x,), out, dynamo=True)`` with its defaults: static shapes, the
    exporter's default opset and optimisation, no segrt graph rewrites or metadata."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, *size)
    saved = {n: logging.getLogger(n).level for n in ("torch", "onnxscript", "torch.onnx")}
    for n in saved:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LogitsOnly(hf_model).eval(), (example,), str(out), dynamo=True, verbose=False)
    except Exception as exc:
        raise ExportError(f"plain torch.onnx.export of the transformers model failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
    return out


# ----------------------------------------------------------------------------- benchmark candidates


def _flop_counted_macs(spec: str) -> Callable[[tuple[int, int]], int]:
    """MACs of the segrt network at a size, from PyTorch's FLOP counter (FLOPs / 2).

    Counted on segrt's module, whose attention is explicit matmuls: the counter has no rule for
    CPU scaled-dot-product attention, so counting the transformers module would drop the attention
    MACs. Both modules are the same network (:func:`check_same_network`).
    """
    cache: dict[tuple[int, int], int] = {}

    def macs(size: tuple[int, int]) -> int:
        if size not in cache:
            from torch.utils.flop_counter import FlopCounterMode

            from segrt.export.loading import load_model

            model = load_model(spec).model
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, 3, *size))
            cache[size] = counter.get_total_flops() // 2
        return cache[size]

    return macs


def _set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def torch_candidate(spec: str, threads: int | None, name: str = "segrt PyTorch (eager)"):
    """segrt's own SegFormer module in eager PyTorch, for checkpoints given to ``segrt bench``."""
    from segrt.export.loading import load_model
    from segrt.measure.bench import Candidate, Runner

    meta = load_model(spec).metadata

    def load(size: tuple[int, int]) -> Runner:
        model = load_model(spec).model.eval()
        used = _set_threads(threads)

        @torch.inference_mode()
        def infer(x: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(x)).numpy()

        return Runner(infer, info={"backend": "pytorch eager", "threads": used, "torch": torch.__version__})

    return Candidate(name, "pytorch", load, source=spec, mean=meta.mean, std=meta.std, macs=_flop_counted_macs(spec))


def transformers_candidate(spec: str, threads: int | None, name: str = "transformers (eager PyTorch)",
                           check_frames: Sequence[np.ndarray] = ()):
    """``SegformerForSemanticSegmentation`` on the same weights, called as its documentation shows."""
    from segrt.export.loading import load_model
    from segrt.measure.bench import Candidate, Runner

    meta = load_model(spec).metadata

    def load(size: tuple[int, int]) -> Runner:
        import transformers

        loaded = load_model(spec)
        hf = to_transformers(loaded.model, loaded.metadata)
        err = check_same_network(hf, loaded.model, list(check_frames), loaded.metadata, size) if check_frames else None
        del loaded
        used = _set_threads(threads)

        @torch.inference_mode()
        def infer(x: np.ndarray) -> np.ndarray:
            return hf(pixel_values=torch.from_numpy(x)).logits.numpy()

        return Runner(infer, info={"backend": "pytorch eager", "threads": used, "torch": torch.__version__,
                                   "transformers": transformers.__version__,
                                   "attention": hf.config._attn_implementation, "max_rel_error_vs_segrt": err})

    return Candidate(name, "transformers", load, source=spec, mean=meta.mean, std=meta.std,
                     macs=_flop_counted_macs(spec))


def plain_onnx_candidate(spec: str, threads: int | None, workdir: str | Path,
                         name: str = "transformers -> torch.onnx (ORT defaults)"):
    """The transformers model through a generic ``torch.onnx.export`` and ONNX Runtime with default
    session options. The export happens in ``prepare`` so it is not charged to load memory."""
    from segrt.export.loading import load_model
    from segrt.measure.bench import Candidate, Runner, ort_plain_session

    meta = load_model(spec).metadata
    workdir = Path(workdir)
    paths: dict[tuple[int, int], Path] = {}

    def prepare(size: tuple[int, int]) -> None:
        if size in paths:
            return
        loaded = load_model(spec)
        hf = to_transformers(loaded.model, loaded.metadata)
        paths[size] = export_plain_onnx(hf, workdir / f"transformers_plain_{size[0]}x{size[1]}.onnx", size)

    def load(size: tuple[int, int]) -> Runner:
        import onnxruntime as ort

        prepare(size)
        sess = ort_plain_session(paths[size], threads)
        feed = sess.get_inputs()[0].name
        return Runner(lambda x: sess.run(None, {feed: x})[0], info={
            "backend": "onnxruntime:cpu (default session options)", "threads": threads, "path": str(paths[size]),
            "onnxruntime": ort.__version__})

    def macs(size: tuple[int, int]) -> int:
        from segrt.export.passes.macs import count_macs

        prepare(size)
        return count_macs(paths[size]).total

    return Candidate(name, "onnxruntime", load, source=spec, mean=meta.mean, std=meta.std, macs=macs, prepare=prepare)
