"""The prunable structure of a SegFormer: channel groups, gates on them, MAC costs, and the surgery
that turns a keep-plan into a genuinely smaller dense model.

A *group* is a set of channels that must disappear together for the model to stay dense:

- ``mlp``: one Mix-FFN hidden channel = a row of fc1, one depth-wise conv filter, a column of fc2.
- ``head``: one attention head = its ``head_dim`` rows of q/k/v and columns of the output projection.
- ``chan``: one q/k/v channel position inside the heads (the same position in every head, so all
  heads keep one ``head_dim``): a q and k row (one term of every dot product) and a v row with its
  output-projection column.
- ``decoder``: one decoder channel = that output of every stage projection, the matching input of the
  fuse conv in every stage slice, the fuse output, its BatchNorm entry and a classifier column.

Stage widths (the residual streams and patch embeddings) are left alone: they are shared by every
LayerNorm, the spatial-reduction convs and the next stage, and keeping them makes a pruned student
feature-compatible with its teacher for distillation.

Every group has a *gate* (:class:`Gates`): a multiplier on exactly the signal the group produces.
A gate at 0 is the group removed, so the pruned model equals the gated model with the removed gates
zeroed (tested), and gate gradients are first-order estimates of each group's importance.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from segrt.export.model.segformer import ConvBNReLU, LinearProjection, SegFormer, SegFormerConfig
from segrt.runtime.errors import ConfigError

KINDS = ("mlp", "head", "chan", "decoder")


@dataclass
class PrunePlan:
    """Indices kept per group family. ``mlp[s][b]`` hidden channels, ``heads[s][b]`` heads,
    ``channels[s][b]`` positions inside each head, ``decoder`` decoder channels."""

    mlp: list[list[list[int]]]
    heads: list[list[list[int]]]
    channels: list[list[list[int]]]
    decoder: list[int]

    @classmethod
    def full(cls, cfg: SegFormerConfig) -> PrunePlan:
        def per_block(fn):
            return [[list(range(fn(s, b))) for b in range(cfg.depths[s])] for s in range(len(cfg.depths))]

        return cls(mlp=per_block(cfg.hidden_width), heads=per_block(cfg.num_heads),
                   channels=per_block(lambda s, b: cfg.attn_width(s, b) // cfg.num_heads(s, b)),
                   decoder=list(range(cfg.decoder_dim)))

    def config(self, cfg: SegFormerConfig) -> SegFormerConfig:
        """The architecture this plan produces from ``cfg``."""
        stages = range(len(cfg.depths))
        return dataclasses.replace(
            cfg,
            mlp_hidden=[[len(self.mlp[s][b]) for b in range(cfg.depths[s])] for s in stages],
            attn_dims=[[len(self.heads[s][b]) * len(self.channels[s][b]) for b in range(cfg.depths[s])]
                       for s in stages],
            block_heads=[[len(self.heads[s][b]) for b in range(cfg.depths[s])] for s in stages],
            decoder_dim=len(self.decoder))

    def without(self, kind: str, stage: int, block: int, index: int) -> PrunePlan:
        """A copy with one group (by its index in the *original* model) removed."""
        plan = copy.deepcopy(self)
        kept = plan.kept(kind, stage, block)
        kept.remove(index)
        return plan

    def kept(self, kind: str, stage: int = 0, block: int = 0) -> list[int]:
        if kind == "decoder":
            return self.decoder
        return {"mlp": self.mlp, "head": self.heads, "chan": self.channels}[kind][stage][block]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        return cls(**json.loads(text))


def _conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def config_macs(cfg: SegFormerConfig, size: tuple[int, int], folded: bool = True) -> int:
    """Multiply-accumulates of one image, by the rule of :mod:`segrt.export.passes.macs` (Conv, MatMul, Gemm;
    no norms, softmax, resizes). ``folded`` counts the decoder as export ships it (:mod:`.folding`)."""
    h, w = size
    total = 0
    tokens = []
    for s in range(len(cfg.depths)):
        k, st, c = cfg.patch_sizes[s], cfg.strides[s], cfg.widths[s]
        cin = cfg.in_channels if s == 0 else cfg.widths[s - 1]
        h, w = _conv_out(h, k, st, k // 2), _conv_out(w, k, st, k // 2)
        n = h * w
        tokens.append(n)
        total += n * c * cin * k * k
        r = cfg.sr_ratios[s]
        m = n
        if r > 1:
            m = _conv_out(h, r, r, 0) * _conv_out(w, r, r, 0)
        for b in range(cfg.depths[s]):
            a, hid = cfg.attn_width(s, b), cfg.hidden_width(s, b)
            if r > 1:
                total += m * c * c * r * r
            total += n * c * a + 2 * m * c * a + n * a * c + 2 * n * m * a
            total += n * c * hid + n * hid * 9 + n * hid * c
    d, n0 = cfg.decoder_dim, tokens[0]
    total += sum(n * c * d for n, c in zip(tokens, cfg.widths))
    if folded:
        if cfg.head_style == "mmseg":  # the fuse slice stays a second 1x1 conv after each stage's ReLU
            total += sum(n * d * d for n in tokens)
    else:
        total += n0 * len(cfg.widths) * d * d
    return total + n0 * d * cfg.num_classes


def shrunk(cfg: SegFormerConfig, kind: str, stage: int, block: int) -> SegFormerConfig:
    """``cfg`` (with explicit per-block widths, as :meth:`PrunePlan.config` makes) minus one group."""
    mlp = [list(r) for r in cfg.mlp_hidden]
    attn = [list(r) for r in cfg.attn_dims]
    heads = [list(r) for r in cfg.block_heads]
    head_dim = attn[stage][block] // heads[stage][block]
    if kind == "mlp":
        mlp[stage][block] -= 1
    elif kind == "head":
        heads[stage][block] -= 1
        attn[stage][block] -= head_dim
    elif kind == "chan":
        attn[stage][block] -= heads[stage][block]
    elif kind == "decoder":
        return dataclasses.replace(cfg, decoder_dim=cfg.decoder_dim - 1)
    else:
        raise ConfigError(f"unknown group kind {kind!r}")
    return dataclasses.replace(cfg, mlp_hidden=mlp, attn_dims=attn, block_heads=heads)


def group_costs(cfg: SegFormerConfig, plan: PrunePlan, size: tuple[int, int], folded: bool) -> dict[tuple, int]:
    """MACs saved by removing one more group of each (kind, stage, block), given the current plan."""
    now = plan.config(cfg)
    base = config_macs(now, size, folded)
    costs: dict[tuple, int] = {}
    for s in range(len(cfg.depths)):
        for b in range(cfg.depths[s]):
            for kind in ("mlp", "head", "chan"):
                if len(plan.kept(kind, s, b)) > 1:
                    costs[(kind, s, b)] = base - config_macs(shrunk(now, kind, s, b), size, folded)
    if len(plan.decoder) > 1:
        costs[("decoder", 0, 0)] = base - config_macs(shrunk(now, "decoder", 0, 0), size, folded)
    return costs


class Gates(nn.Module):
    """One multiplier per group of a (possibly already pruned) SegFormer, all 1 to start with."""

    def __init__(self, cfg: SegFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.gates = nn.ParameterDict()
        for s in range(len(cfg.depths)):
            for b in range(cfg.depths[s]):
                heads = cfg.num_heads(s, b)
                self.gates[f"mlp_{s}_{b}"] = nn.Parameter(torch.ones(cfg.hidden_width(s, b)))
                self.gates[f"head_{s}_{b}"] = nn.Parameter(torch.ones(heads))
                self.gates[f"chan_{s}_{b}"] = nn.Parameter(torch.ones(cfg.attn_width(s, b) // heads))
        self.gates["decoder_0_0"] = nn.Parameter(torch.ones(cfg.decoder_dim))

    def get(self, kind: str, stage: int = 0, block: int = 0) -> nn.Parameter:
        return self.gates[f"{kind}_{stage}_{block}"]

    def keys(self) -> list[tuple[str, int, int]]:
        out = []
        for name in self.gates:
            kind, s, b = name.split("_")
            out.append((kind, int(s), int(b)))
        return out

    def install(self, model: SegFormer) -> list:
        """Hook the gates into ``model``; returns the handles (call ``.remove()`` on each to undo)."""
        handles = []

        def pre(gate_fn):
            return lambda module, args: (args[0] * gate_fn(),) + tuple(args[1:])

        def post(gate_fn):
            return lambda module, args, out: out * gate_fn()

        for s, stage in enumerate(model.encoder.stages):
            for b, block in enumerate(stage.blocks):
                att = block.attention
                g_mlp, g_head, g_chan = self.get("mlp", s, b), self.get("head", s, b), self.get("chan", s, b)
                handles.append(block.mlp.fc2.register_forward_pre_hook(pre(lambda g=g_mlp: g)))
                handles.append(att.o_proj.register_forward_pre_hook(
                    pre(lambda g=g_head, hd=att.head_dim: g.repeat_interleave(hd))))
                # q/k/v position j of every head: gating q and v zeroes the dot-product term and the
                # value channel exactly as removing the rows does (k then only meets a zero q).
                for proj in (att.q_proj, att.v_proj):
                    handles.append(proj.register_forward_hook(post(lambda g=g_chan, h=att.heads: g.repeat(h))))
        head = model.decode_head
        g_dec = self.get("decoder")
        n_stages = len(head.linear_projections)
        def fuse_gate(g=g_dec, k=n_stages):
            return g.repeat(k)[None, :, None, None]

        handles.append(head.linear_fuse.register_forward_pre_hook(pre(fuse_gate)))
        handles.append(head.classifier.register_forward_pre_hook(pre(lambda g=g_dec: g[None, :, None, None])))
        return handles


def _rows(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return t[torch.as_tensor(idx, dtype=torch.long)]


def _cols(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return t[:, torch.as_tensor(idx, dtype=torch.long)]


@torch.no_grad()
def apply_plan(model: SegFormer, plan: PrunePlan) -> SegFormer:
    """A new, smaller dense SegFormer holding the kept slices of ``model``'s weights."""
    cfg = model.config
    check_plan(cfg, plan)
    new_cfg = plan.config(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for s, stage in enumerate(model.encoder.stages):
        for b, block in enumerate(stage.blocks):
            p = f"encoder.stages.{s}.blocks.{b}."
            hd = block.attention.head_dim
            heads, chans = plan.heads[s][b], plan.channels[s][b]
            idx = [h * hd + c for h in heads for c in chans]
            # A smaller head_dim changes the softmax scale (head_dim ** -0.5); folding the ratio into q
            # keeps every attention logit exactly as it was.
            fix = math.sqrt(len(chans) / hd)
            for name in ("q_proj", "k_proj", "v_proj"):
                factor = fix if name == "q_proj" else 1.0
                state[p + f"attention.{name}.weight"] = _rows(state[p + f"attention.{name}.weight"], idx) * factor
                state[p + f"attention.{name}.bias"] = _rows(state[p + f"attention.{name}.bias"], idx) * factor
            state[p + "attention.o_proj.weight"] = _cols(state[p + "attention.o_proj.weight"], idx)
            hid = plan.mlp[s][b]
            for name in ("fc1.weight", "fc1.bias", "dwconv.weight", "dwconv.bias"):
                state[p + "mlp." + name] = _rows(state[p + "mlp." + name], hid)
            state[p + "mlp.fc2.weight"] = _cols(state[p + "mlp.fc2.weight"], hid)
    head = model.decode_head
    dec, d = plan.decoder, cfg.decoder_dim
    for i, proj in enumerate(head.linear_projections):
        p = f"decode_head.linear_projections.{i}."
        if isinstance(proj, LinearProjection):
            names = ["proj.weight", "proj.bias"]
        elif isinstance(proj, ConvBNReLU):
            names = ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
        else:
            raise ConfigError(f"cannot prune decoder projection of type {type(proj).__name__}")
        for name in names:
            state[p + name] = _rows(state[p + name], dec)
    n_stages = len(head.linear_projections)
    fuse_in = [slot * d + c for slot in range(n_stages) for c in dec]
    state["decode_head.linear_fuse.weight"] = _cols(_rows(state["decode_head.linear_fuse.weight"], dec), fuse_in)
    for name in ("weight", "bias", "running_mean", "running_var"):
        state[f"decode_head.batch_norm.{name}"] = _rows(state[f"decode_head.batch_norm.{name}"], dec)
    state["decode_head.classifier.weight"] = _cols(state["decode_head.classifier.weight"], dec)
    pruned = SegFormer(new_cfg)
    pruned.load_state_dict(state, strict=True)
    return pruned.train(model.training)


def check_plan(cfg: SegFormerConfig, plan: PrunePlan) -> None:
    full = PrunePlan.full(cfg)
    for kind in KINDS:
        for s in range(len(cfg.depths)):
            for b in range(cfg.depths[s]):
                kept, limit = plan.kept(kind, s, b), len(full.kept(kind, s, b))
                if not kept or len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= limit:
                    raise ConfigError(f"prune plan keeps invalid {kind} indices in stage {s} block {b}: {kept[:8]}...")
                if kind == "decoder":
                    break
            if kind == "decoder":
                break
