"""Small data sets that ship with pyrovi (no download)."""

from __future__ import annotations

import torch

__all__ = ["eight_schools", "diabetes"]


def eight_schools() -> tuple[torch.Tensor, torch.Tensor]:
    """Rubin's (1981) eight schools: estimated SAT coaching effects and their standard errors.

    Returns
    -------
    y, sigma : torch.Tensor
        Shape ``(8,)`` each, float64.
    """
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64)
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)
    return y, sigma


def diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled diabetes data, features and target standardized (float64).

    Returns
    -------
    X : torch.Tensor
        ``(442, 10)`` standardized features (partly collinear: s1, s2 and s4).
    y : torch.Tensor
        ``(442,)`` standardized disease progression.
    """
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return torch.tensor(X), torch.tensor(y)
