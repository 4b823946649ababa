"""Named deployment targets: what differs between a Jetson Orin on JetPack 6, one on JetPack 7, a Thor
and a desktop GPU when building a TensorRT engine.

Figures come from NVIDIA's JetPack release notes (TensorRT/CUDA per JetPack) and the Jetson module data
sheets (DLA cores, memory). Budgets are conservative defaults that leave room for the robot's other
processes on shared-memory Jetsons; every one can be overridden on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from segrt.engines.versions import GpuInfo, TrtVersion, matches
from segrt.runtime.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_COMPATIBILITY = ("none", "ampere_plus")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    # (major, minor) of the GPU, or None for "the local GPU" (detected when building).
    compute_capability: tuple[int, int] | None
    # Expected TensorRT versions, newest-default first: "10.3" means 10.3.x, "11" any 11.x.
    tensorrt: tuple[str, ...]
    platform: str  # "jetpack-6", "jetpack-7", "desktop"
    default_precision: str = "fp16"
    workspace_mb: int = 1024  # builder scratch memory (MemoryPoolType.WORKSPACE)
    memory_budget_mb: int = 2048  # weights + activations the engine may take at run time
    dla_cores: int = 0
    jetson: bool = True
    hardware_compatibility: str = "none"  # engines run only on this GPU architecture unless ampere_plus
    min_compute_capability: tuple[int, int] | None = None  # for hardware-compatible builds

    @property
    def default_tensorrt(self) -> TrtVersion:
        return TrtVersion.parse(self.tensorrt[0])

    @property
    def sm(self) -> str:
        if self.compute_capability is None:
            if self.min_compute_capability is None:
                return "local GPU"
            return f">= sm_{''.join(map(str, self.min_compute_capability))}"
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def expects(self, version: TrtVersion) -> bool:
        return any(matches(v, version) for v in self.tensorrt)

    def accepts_gpu(self, gpu: GpuInfo) -> bool:
        """Can an engine for this target be built on (and run on) ``gpu``?"""
        if self.compute_capability is not None:
            return gpu.compute_capability == self.compute_capability and gpu.integrated == self.jetson
        if self.min_compute_capability is not None:
            return gpu.compute_capability >= self.min_compute_capability and not gpu.integrated
        return True


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("jetson-orin", "Jetson AGX Orin / Orin NX, JetPack 6.1-6.2 (CUDA 12.6)", (8, 7), ("10.3",), "jetpack-6",
           workspace_mb=2048, memory_budget_mb=4096, dla_cores=2),
    Target("jetson-orin-nano", "Jetson Orin Nano (no DLA), JetPack 6.1-6.2 (CUDA 12.6)", (8, 7), ("10.3",), "jetpack-6",
           workspace_mb=512, memory_budget_mb=1536, dla_cores=0),
    Target("jetson-orin-jp7", "Jetson AGX Orin on JetPack 7.2 (CUDA 13)", (8, 7), ("10.16", "11"), "jetpack-7",
           workspace_mb=2048, memory_budget_mb=4096, dla_cores=2),
    Target("jetson-thor", "Jetson AGX Thor (sm_110, no DLA), JetPack 7.x (CUDA 13)", (11, 0), ("10.16", "11"),
           "jetpack-7",
           workspace_mb=4096, memory_budget_mb=8192, dla_cores=0),
    Target("desktop", "the local NVIDIA GPU (engine runs only on this GPU model and TensorRT version)", None,
           ("10", "11"), "desktop", workspace_mb=4096, memory_budget_mb=8192, jetson=False),
    Target("desktop-ampere-plus", "any desktop GPU from Ampere on (hardware-compatible engine, a little slower)",
           None, ("10", "11"), "desktop", workspace_mb=4096, memory_budget_mb=8192, jetson=False,
           hardware_compatibility="ampere_plus", min_compute_capability=(8, 0)),
]}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)} "
                          "(see `segrt targets`)") from None
