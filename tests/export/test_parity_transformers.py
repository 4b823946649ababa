"""segrt's SegFormer reproduces transformers.SegformerForSemanticSegmentation on the same weights."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from segrt.export.model.checkpoints import detect_format, from_huggingface, load_checkpoint, load_state_into  # noqa: E402
from segrt.export.model.segformer import SegFormer, SegFormerConfig  # noqa: E402

HF4_NAMES = [  # transformers 5.x -> 4.x key names, applied to a 5.x state dict to fake a 4.x checkpoint
    ("segformer.stages.{s}.patch_embeddings.", "segformer.encoder.patch_embeddings.{s}."),
    ("segformer.stages.{s}.blocks.", "segformer.encoder.block.{s}."),
    ("segformer.stages.{s}.layer_norm.", "segformer.encoder.layer_norm.{s}."),
]


def to_hf4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for s in range(4):
            for new, old in HF4_NAMES:
                k = k.replace(new.format(s=s), old.format(s=s))
        for new, old in [
            ("attention.q_proj", "attention.self.query"),
            ("attention.k_proj", "attention.self.key"),
            ("attention.v_proj", "attention.self.value"),
            ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
            ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
            ("attention.o_proj", "attention.output.dense"),
            ("mlp.fc1", "mlp.dense1"),
            ("mlp.fc2", "mlp.dense2"),
            ("layernorm_before", "layer_norm_1"),
            ("layernorm_after", "layer_norm_2"),
            ("decode_head.linear_projections", "decode_head.linear_c"),
        ]:
            k = k.replace(new, old)
        out[k] = v
    return out


def hf_model(variant: str, num_labels: int, seed: int):
    torch.manual_seed(seed)
    sizes = {"b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768)}
    hidden, depths, dec = sizes[variant]
    cfg = transformers.SegformerConfig(
        num_labels=num_labels,
        hidden_sizes=hidden,
        depths=depths,
        decoder_hidden_size=dec,
        num_attention_heads=[1, 2, 5, 8],
    )
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()
    # Non-trivial BatchNorm statistics so the decoder's normalisation is really exercised.
    bn = model.decode_head.batch_norm
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("variant", ["b0", "b2"])
@pytest.mark.parametrize("names", ["hf5", "hf4"])
def test_parity_with_transformers(variant, names, camvid_frame):
    from segrt.runtime.preprocess import frames_to_input

    hf = hf_model(variant, 11, seed=1)
    state = hf.state_dict() if names == "hf5" else to_hf4(hf.state_dict())
    assert detect_format(state) == "huggingface"
    model = SegFormer(SegFormerConfig.from_variant(variant, 11)).eval()
    load_state_into(model, from_huggingface(state), "test")
    x = torch.from_numpy(frames_to_input([camvid_frame], (256, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        actual = model(x)
    assert actual.shape == expected.shape == (1, 11, 64, 80)
    assert relative_error(actual, expected) < 1e-5


def test_hf_folder_checkpoint_loads_config_and_labels(tmp_path):
    hf = hf_model("b0", 3, seed=2)
    hf.config.id2label = {0: "road", 1: "car", 2: "sky"}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_checkpoint(tmp_path / "hf")
    assert loaded.metadata.classes == ["road", "car", "sky"]
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        assert relative_error(loaded.model(x), hf(pixel_values=x).logits) < 1e-5
