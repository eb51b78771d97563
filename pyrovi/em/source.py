"""Chunk sources for streaming EM: data that is read a block of rows at a time.

:func:`chunked` wraps an array (a numpy array or memmap, a tensor) or a ``.npy`` file into a
re-iterable :class:`Chunks`; :func:`as_source` turns whatever the user passes to
:meth:`pyrovi.EM.stream` into a :class:`Source` that yields 2-D tensors and knows whether it
can be read more than once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["Chunks", "chunked", "Source", "as_source", "DEFAULT_ROWS"]

#: Rows per chunk when an array is passed without :func:`chunked`.
DEFAULT_ROWS = 65536


class Chunks:
    """Re-iterable blocks of ``rows`` rows of a 2-D array or of a ``.npy`` file.

    A ``.npy`` file is read with plain file reads (``numpy.fromfile``), one block at a time,
    so only one block is ever in memory; a numpy memmap is sliced and each block copied out.
    Each block is yielded as a ``torch.Tensor`` of shape ``(<= rows, D)``.
    """

    def __init__(self, data: Any, rows: int):
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int (rows per chunk), got {rows!r}")
        self.rows = rows
        self._path = None
        if isinstance(data, (str, os.PathLike)):
            self._path = os.fspath(data)
            with open(self._path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                        np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read(fh)
                self._offset = fh.tell()
            if fortran or len(shape) != 2:
                raise ValueError(
                    f"{self._path!r} holds an array of shape {shape}"
                    f"{' in Fortran order' if fortran else ''}; expected a C-ordered 2-D "
                    "array (n_samples, n_features) saved with numpy.save"
                )
            self.shape, self.dtype = tuple(shape), dtype
        else:
            if not isinstance(data, (np.ndarray, torch.Tensor)) or data.ndim != 2:
                what = getattr(data, "shape", type(data).__name__)
                raise ValueError(
                    f"data must be a 2-D numpy array, memmap, tensor or the path of a .npy "
                    f"file, got {what}"
                )
            self._data = data
            self.shape = tuple(data.shape)

    def __len__(self) -> int:
        return -(-self.shape[0] // self.rows)

    def __iter__(self) -> Iterator[torch.Tensor]:
        n, d = self.shape
        if self._path is not None:
            with open(self._path, "rb") as fh:
                for s in range(0, n, self.rows):
                    count = min(self.rows, n - s) * d
                    fh.seek(self._offset + s * d * self.dtype.itemsize)
                    block = np.fromfile(fh, dtype=self.dtype, count=count)
                    yield torch.from_numpy(block.reshape(-1, d))
            return
        for s in range(0, n, self.rows):
            block = self._data[s : s + self.rows]
            yield block if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block))


def chunked(data: Any, rows: int = DEFAULT_ROWS) -> Chunks:
    """Blocks of ``rows`` rows of ``data``, re-readable: the source of a streamed EM fit.

    Parameters
    ----------
    data : numpy.ndarray, numpy.memmap, torch.Tensor, str or os.PathLike
        A 2-D array ``(n_samples, n_features)``, or the path of a ``.npy`` file holding one
        (read block by block, never whole).
    rows : int
        Rows per block.

    Returns
    -------
    Chunks
    """
    return Chunks(data, rows)


@dataclasses.dataclass(frozen=True)
class Source:
    """The data of a streamed fit: ``open()`` gives a fresh iterator of 2-D tensors.

    ``reiterable`` is False for a one-shot iterator (a generator object), which can be read
    once only; ``num_chunks`` is the number of chunks when the source knows it.
    """

    open: Callable[[], Iterator[torch.Tensor]]
    reiterable: bool
    num_chunks: int | None = None


def _block(item: Any, index: int) -> torch.Tensor:
    """A chunk as a tensor: a tensor, an array, or a 1-tuple/list of one (a DataLoader
    over a ``TensorDataset`` yields ``[x]``)."""
    if isinstance(item, (tuple, list)) and len(item) == 1:
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(np.asarray(item))
    if not isinstance(item, torch.Tensor):
        raise TypeError(
            f"chunk {index} of chunks is a {type(item).__name__}; expected a 2-D tensor or "
            "numpy array (or a DataLoader batch [x] holding one)"
        )
    return item


def as_source(chunks: Any) -> Source:
    """The :class:`Source` of what the user passed as ``chunks``.

    Accepted: :func:`chunked` blocks; a 2-D array, memmap, tensor or ``.npy`` path (cut into
    blocks of :data:`DEFAULT_ROWS` rows); a re-iterable of tensors/arrays (a list, a
    ``torch.utils.data.DataLoader``); a function that returns a fresh iterator at each call
    (a generator function); or a one-shot iterator (a generator object).
    """
    if isinstance(chunks, (str, os.PathLike, np.ndarray, torch.Tensor)):
        chunks = chunked(chunks)
    if isinstance(chunks, Iterator):  # a generator object: one pass only
        consumed = []

        def once() -> Iterator[torch.Tensor]:
            if consumed:
                raise RuntimeError("a one-shot iterator of chunks was read twice")
            consumed.append(True)
            return (_block(item, i) for i, item in enumerate(chunks))

        return Source(open=once, reiterable=False)
    if isinstance(chunks, Iterable):
        size = len(chunks) if hasattr(chunks, "__len__") else None
        return Source(
            open=lambda: (_block(item, i) for i, item in enumerate(chunks)),
            reiterable=True,
            num_chunks=size,
        )
    if callable(chunks):

        def fresh() -> Iterator[torch.Tensor]:
            it = chunks()
            if not isinstance(it, Iterable):
                raise TypeError(
                    f"chunks() returned a {type(it).__name__}; a chunk factory must return an "
                    "iterator of 2-D tensors or arrays"
                )
            return (_block(item, i) for i, item in enumerate(it))

        return Source(open=fresh, reiterable=True)
    raise TypeError(
        f"chunks must be an iterable of 2-D tensors or arrays (a list, a DataLoader, "
        f"pyrovi.em.chunked(array, rows)), a function returning a fresh iterator, or an "
        f"array or .npy path; got {type(chunks).__name__}"
    )
