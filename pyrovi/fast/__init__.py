"""Compiled fast path for the Gaussian guide families (under construction)."""


def compiled_unsupported(fit) -> str | None:
    return "the compiled path is not available yet"


def train_compiled(fit):
    raise NotImplementedError
