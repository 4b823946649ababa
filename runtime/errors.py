"""Every error segrt raises derives from :class:`SegrtError`.

Callers on a robot catch one base class; the subclasses tell *what kind* of problem it was so that
an application can react (retry a camera, refuse a model, drop a frame) without parsing messages.
"""

from __future__ import annotations


class SegrtError(Exception):
    """Base class of all segrt errors."""


class InputError(SegrtError, ValueError):
    """A frame or batch handed to an engine has the wrong shape, dtype or size."""


class ModelLoadError(SegrtError):
    """A model file is missing, unreadable, corrupt, or not a segrt-compatible model."""


class UnsafeModelError(ModelLoadError):
    """A model file asks for something segrt refuses by default (pickle, paths outside its folder)."""


class CheckpointError(ModelLoadError):
    """A checkpoint's keys or tensor shapes do not match the architecture they are loaded into."""


class ExportError(SegrtError):
    """Exporting to ONNX failed, or the exported graph does not reproduce the PyTorch model."""


class ExportVerificationError(ExportError):
    """The exported graph's outputs differ from the PyTorch model's beyond the allowed tolerance."""


class BackendError(SegrtError):
    """An inference backend (ONNX Runtime, TensorRT, CUDA) failed while running a model."""


class BackendUnavailableError(BackendError):
    """The requested backend or one of its libraries is not installed on this machine."""


class EngineCompatibilityError(ModelLoadError):
    """A TensorRT engine was built for another GPU, TensorRT version or has been tampered with."""


class MissingPluginError(ModelLoadError):
    """A model needs a TensorRT plugin or ONNX custom op that is not registered."""


class SourceError(SegrtError):
    """A frame source (camera, video, folder, stream) could not be opened or failed while reading."""


class SourceDisconnectedError(SourceError):
    """A live source (camera, network stream) stopped delivering frames; it may come back, so streams reconnect."""


class OutputError(SegrtError):
    """A result could not be written or shown (video file, mask folder, window)."""


class DatasetError(SegrtError):
    """A dataset folder does not have the expected layout, or an image and its label disagree."""


class ConfigError(SegrtError, ValueError):
    """A configuration value (merge strategy, target, precision, size) is invalid."""


class RemoteError(SegrtError):
    """A remote segrt server (Triton) refused or failed a request; the message carries the server's reason."""


class ServerUnavailableError(RemoteError):
    """A remote segrt server cannot be reached (down, restarting, wrong address) or did not answer in time."""
