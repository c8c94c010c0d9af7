"""Where a torch model runs: `--device auto|cpu|cuda`, and the dtype that goes with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from thresher.pipelines.engine.errors import ThresherError

if TYPE_CHECKING:
    import torch

DeviceName = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Placement:
    device: torch.device
    # bf16 on a GPU that has it: half the memory and tensor-core speed, with fp32's exponent range, so
    # log-probabilities do not overflow. CPUs stay in fp32, where bf16 matmuls are slower, not faster.
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_device(name: DeviceName = "auto") -> Placement:
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise ThresherError(f"--device {name}: expected auto, cpu or cuda")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ThresherError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    if name == "cpu" or not cuda:
        return Placement(torch.device("cpu"), torch.float32)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return Placement(torch.device("cuda"), dtype)
