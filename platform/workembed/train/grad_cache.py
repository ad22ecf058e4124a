"""Gradient caching: a contrastive step over a batch far larger than one forward pass fits in memory.

A contrastive loss couples every row of a batch with every other row, so it cannot be split into
independent micro-batches. Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup", https://arxiv.org/abs/2101.06983) computes the loss and the parameter
gradients of the full batch while only one chunk of activations is alive at a time:

1. encode every chunk of every side without a graph, recording the RNG state before each chunk, and
   concatenate the chunks into the full representations ``R`` (leaves that require grad);
2. compute the loss ``L(R)`` and its gradient ``G = ∂L/∂R`` (a cheap backward: ``R`` is a leaf);
3. re-encode each chunk ``c`` with a graph, replaying its RNG state so that dropout draws the same masks,
   and back-propagate the surrogate ``s_c = Σ ⟨R_c, G_c⟩`` (``G_c`` held constant). By the chain rule
   ``Σ_c ∂s_c/∂θ = Σ_c (∂R_c/∂θ)ᵀ G_c = ∂L/∂θ``: the parameters get the full-batch gradient.

Parameters that the loss uses directly (a learnable temperature) get ``∂L/∂φ`` the same way, through one
more surrogate ``⟨φ, ∂L/∂φ⟩``. Every surrogate goes through the ``backward`` callable, so a DeepSpeed
engine applies its own loss scaling exactly as it would to an uncached ``engine.backward(loss)``.

DeepSpeed (0.19.8): pass ``backward=engine.backward``, run the cache inside
``engine.coalesce_grad_reduction()`` and call ``engine.step()`` once after it::

    cache = GradCache(encode, loss_fn, chunk_size=64, backward=engine.backward)
    with engine.coalesce_grad_reduction():
        result = cache(queries, targets)
    engine.step()

Without the context each ``engine.backward`` is a gradient-accumulation micro step of its own: with
ZeRO-2 and ``gradient_accumulation_steps=1``, several backward calls before one ``step()`` do not add up
and the step applies only part of the gradient. ``coalesce_grad_reduction`` (ZeRO stages 1-3) keeps each
backward's gradient on the parameters and reduces once on exit: one reduction per optimizer step whatever
the number of chunks. It spans exactly one optimizer step, so keep ``gradient_accumulation_steps`` at 1
(the cached batch is the step); ``engine.backward`` then divides by 1, as it would for the uncached loss.
ZeRO stage 0 has no such context: there set ``"managed_gradient_accumulation": false`` (every ``step()``
is the boundary), at the cost of a reduction per backward call and a ``global_samples`` count that counts
every backward call as a micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

Batch = Tensor | Sequence[Tensor] | Mapping[str, Any]
"""Inputs of one side: a tensor, a tuple/list of tensors or a dict (tensors are split on dim 0)."""
Representation = Tensor | Sequence[Tensor] | Mapping[str, Tensor]
"""What ``encode`` returns: pooled ``[n, d]``, or e.g. token-level ``[n, T, d]`` with an ``[n, T]`` mask."""
Encode = Callable[[Any], Representation]
LossFn = Callable[..., Tensor | Mapping[str, Tensor]]


@dataclass(frozen=True)
class RngState:
    """The CPU RNG state and, once CUDA is initialised, the state of every CUDA device."""

    cpu: Tensor
    cuda: tuple[Tensor, ...] = ()

    @classmethod
    def capture(cls) -> RngState:
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else ()
        return cls(torch.get_rng_state(), cuda)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the RNG state outside the block is left as it was."""
        devices = list(range(len(self.cuda)))
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(devices, self.cuda, strict=True):
                torch.cuda.set_rng_state(state, device)
            yield


class CachedLoss(NamedTuple):
    """The detached loss of a cached step and, when ``loss_fn`` returns a dict, its detached parts."""

    loss: Tensor
    parts: dict[str, Tensor]


class Chunks(list):
    """A side given already split into chunks (e.g. each tokenised and padded on its own); GradCache
    encodes them as they are instead of splitting the side by ``chunk_size``."""


def split_batch(batch: Batch, chunk_size: int) -> list[Batch]:
    """Split ``batch`` into chunks of ``chunk_size`` rows (the last may be shorter), keeping its structure.

    Dict values that are not tensors are passed unchanged to every chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    rows = batch_size(batch)
    return [_slice_rows(batch, start, min(start + chunk_size, rows)) for start in range(0, rows, chunk_size)]


def batch_size(batch: Batch) -> int:
    """Rows of ``batch``: the common first dimension of its tensors."""
    sizes = {tensor.shape[0] for tensor in _tensors(batch) if tensor.ndim > 0}
    if len(sizes) != 1:
        raise ValueError(
            f"a batch needs tensors with one common first (row) dimension, got sizes {sorted(sizes)}"
        )
    return sizes.pop()


@dataclass
class GradCache:
    """One contrastive step with cached representation gradients (see the module docstring).

    ``encode`` maps a chunk of inputs to its representation; give one per side when the sides are
    encoded differently (token-level queries, pooled targets). Chunks are concatenated on dim 0, so every
    chunk must have the same trailing shape (pad token-level inputs to one length for the whole side).
    ``loss_fn(*representations)`` returns a scalar tensor, or a dict of scalar parts whose sum is the
    loss. ``backward(tensor)`` back-propagates a scalar: ``Tensor.backward`` or a DeepSpeed
    ``engine.backward``. With ``replay_rng=False`` the second forward draws fresh randomness (only
    correct for an encoder without dropout or other sampling).
    """

    encode: Encode | Sequence[Encode]
    loss_fn: LossFn
    chunk_size: int
    backward: Callable[[Tensor], Any] = Tensor.backward
    replay_rng: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size}")

    def __call__(self, *sides: Batch) -> CachedLoss:
        """Accumulate the full-batch gradient of the loss over ``sides`` into the parameters."""
        if not sides:
            raise ValueError("GradCache needs at least one side of inputs")
        encoders = self._encoders(len(sides))
        chunks = [side if isinstance(side, Chunks) else split_batch(side, self.chunk_size) for side in sides]

        # 1. encode without a graph, remembering the RNG state before each chunk
        states: list[list[RngState | None]] = []
        full: list[Representation] = []
        for encode, side_chunks in zip(encoders, chunks, strict=True):
            side_states, side_reps = [], []
            for chunk in side_chunks:
                side_states.append(RngState.capture() if self.replay_rng else None)
                with torch.no_grad():
                    side_reps.append(_checked(encode(chunk), batch_size(chunk)))
            states.append(side_states)
            full.append(_concatenate(side_reps))

        # 2. the loss on the full representations and its gradient with respect to them
        output = self.loss_fn(*full)
        total, parts = _total(output)
        if not total.requires_grad:
            raise ValueError("loss_fn returned a loss that does not depend on the representations")
        leaves = [leaf for rep in full for leaf in _leaves(rep) if leaf.requires_grad]
        loss_params = _loss_parameters(total, exclude=leaves)
        grads = torch.autograd.grad(total, [*leaves, *loss_params], allow_unused=True)
        rep_grads = dict(zip(map(id, leaves), grads[: len(leaves)], strict=True))

        # 3. re-encode chunk by chunk with a graph and push the cached gradients into the parameters
        for encode, side_chunks, side_states, rep in zip(encoders, chunks, states, full, strict=True):
            side_grads = [rep_grads.get(id(leaf)) for leaf in _leaves(rep)]
            if all(grad is None for grad in side_grads):
                continue
            start = 0
            for chunk, state in zip(side_chunks, side_states, strict=True):
                rows = batch_size(chunk)
                with state.replay() if state is not None else nullcontext():
                    chunk_rep = encode(chunk)
                pairs = [
                    (leaf, grad[start : start + rows])
                    for leaf, grad in zip(_leaves(chunk_rep), side_grads, strict=True)
                    if grad is not None
                ]
                start += rows
                surrogate = _surrogate(pairs)
                if surrogate.requires_grad:
                    self.backward(surrogate)
        param_pairs = [
            (p, g) for p, g in zip(loss_params, grads[len(leaves) :], strict=True) if g is not None
        ]
        if param_pairs:
            self.backward(_surrogate(param_pairs))
        return CachedLoss(total.detach(), {name: part.detach() for name, part in parts.items()})

    def _encoders(self, n_sides: int) -> list[Encode]:
        if callable(self.encode):
            return [self.encode] * n_sides
        encoders = list(self.encode)
        if len(encoders) != n_sides:
            raise ValueError(f"GradCache has {len(encoders)} encode functions for {n_sides} sides of inputs")
        return encoders


def _tensors(batch: Batch) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, Mapping) else batch
    return [value for value in values if isinstance(value, Tensor)]


def _slice_rows(batch: Batch, start: int, stop: int) -> Batch:
    if isinstance(batch, Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {
            key: value[start:stop] if isinstance(value, Tensor) and value.ndim > 0 else value
            for key, value in batch.items()
        }
    return type(batch)(value[start:stop] for value in batch)


def _leaves(rep: Representation) -> list[Tensor]:
    if isinstance(rep, Tensor):
        return [rep]
    return list(rep.values() if isinstance(rep, Mapping) else rep)


def _pack(like: Representation, leaves: list[Tensor]) -> Representation:
    if isinstance(like, Tensor):
        return leaves[0]
    if isinstance(like, Mapping):
        return dict(zip(like.keys(), leaves, strict=True))
    return type(like)(leaves)


def _checked(rep: Representation, rows: int) -> Representation:
    """``rep`` if it is a tensor or a tuple/list/dict of tensors with ``rows`` rows each."""
    if not isinstance(rep, Tensor | Sequence | Mapping) or not all(
        isinstance(leaf, Tensor) for leaf in _leaves(rep)
    ):
        raise ValueError(f"encode must return a tensor or a tuple/list/dict of tensors, got {type(rep)}")
    shapes = [tuple(leaf.shape) for leaf in _leaves(rep)]
    if any(not shape or shape[0] != rows for shape in shapes):
        raise ValueError(f"encode returned shapes {shapes} for a chunk of {rows} rows (rows must be dim 0)")
    return rep


def _concatenate(chunk_reps: list[Representation]) -> Representation:
    """Concatenate chunk representations on dim 0; floating-point leaves become leaves that require grad."""
    columns = zip(*(_leaves(rep) for rep in chunk_reps), strict=True)
    leaves = []
    for parts in columns:
        trailing = {tuple(part.shape[1:]) for part in parts}
        if len(trailing) > 1:
            raise ValueError(
                f"chunk representations differ beyond the row dimension: {sorted(trailing)} "
                "(pad the inputs of a side to one length so that every chunk has the same shape)"
            )
        leaf = torch.cat(parts)
        leaves.append(leaf.requires_grad_() if leaf.is_floating_point() else leaf)
    return _pack(chunk_reps[0], leaves)


def _total(output: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    parts = dict(output) if isinstance(output, Mapping) else {}
    if isinstance(output, Mapping):
        if not output:
            raise ValueError("loss_fn returned an empty dict of loss parts")
        values = list(output.values())
    else:
        values = [output]
    if not all(isinstance(value, Tensor) and value.ndim == 0 for value in values):
        raise ValueError("loss_fn must return a scalar tensor or a dict of scalar tensors")
    return sum(values[1:], values[0]), parts


def _loss_parameters(total: Tensor, exclude: list[Tensor]) -> list[Tensor]:
    """Leaves that require grad in the graph of ``total``, other than ``exclude`` (the representations)."""
    skip = {id(leaf) for leaf in exclude}
    found: dict[int, Tensor] = {}
    seen: set[Any] = set()
    stack = [total.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in skip:
            found[id(variable)] = variable
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


def _surrogate(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``Σ ⟨x, g⟩`` over the pairs, with the constant gradients ``g`` (at least float32)."""
    terms = []
    for value, grad in pairs:
        dtype = torch.promote_types(torch.promote_types(value.dtype, grad.dtype), torch.float32)
        terms.append(torch.sum(value.to(dtype) * grad.to(dtype)))
    return sum(terms[1:], terms[0]) if terms else torch.zeros(())
