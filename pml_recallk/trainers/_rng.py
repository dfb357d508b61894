"""Save the random number generators before a forward pass and replay them for its second run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RngSnapshot:
    """The CPU generator state and, when CUDA is in use, the state of every visible CUDA device."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...]

    @classmethod
    def capture(cls, include_cuda: bool) -> RngSnapshot:
        cuda = tuple(torch.cuda.get_rng_state_all()) if include_cuda else ()
        return cls(cpu=torch.get_rng_state(), cuda=cuda)

    @contextmanager
    def replayed(self) -> Iterator[None]:
        """Run the block with the generators as they were at capture, then put them back as they are now.

        The second part matters: after the replay the global generators continue from where the first run
        left them, so code after a two-pass step draws the same numbers as after a one-pass step.
        """
        with torch.random.fork_rng(devices=range(len(self.cuda)), device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def cuda_rng_in_use(device: torch.device) -> bool:
    """Whether CUDA generators can be drawn from by a forward pass on `device`.

    CUDA is not initialised just to save its state: a model whose parameters live on the CPU cannot
    draw from a CUDA generator unless it has already put something on a GPU, which initialises CUDA.
    """
    return torch.cuda.is_available() and (device.type == "cuda" or torch.cuda.is_initialized())
