"""Small helpers shared by the unit tests (importable: pyproject puts tests/ on the path)."""

import torch


def gen(seed: int = 0) -> torch.Generator:
    """A fresh CPU generator with the given seed."""
    return torch.Generator().manual_seed(seed)


def t64(values) -> torch.Tensor:
    """A float64 tensor."""
    return torch.tensor(values, dtype=torch.float64)
