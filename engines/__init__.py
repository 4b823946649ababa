"""TensorRT engines: targets, build plans, static compatibility checks, bundles, builder, manifests.

Importing this package loads nothing heavy; modules that need onnx or TensorRT import them themselves,
and only ``manifest`` is used by the robot-side runtime.
"""
