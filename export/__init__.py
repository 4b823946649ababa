"""Model-side tools (need torch): SegFormer, checkpoint loaders, ONNX export, training."""
