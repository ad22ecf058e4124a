"""GradCache: the cached step gives the loss and the parameter gradients of the uncached step.

The uncached reference encodes the same chunks in the same order with a graph (so dropout draws the same
masks from the same seed), concatenates them, and back-propagates the loss once.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from tests.conftest import free_port
from workembed.train.grad_cache import CachedLoss, GradCache, RngState, batch_size, split_batch

TAU = 0.1
N_QUERIES, N_TARGETS = 10, 7
# several positives per query: target i % 7 and target (3i + 1) % 7
POSITIVES = torch.zeros(N_QUERIES, N_TARGETS, dtype=torch.bool)
for _row in range(N_QUERIES):
    POSITIVES[_row, _row % N_TARGETS] = POSITIVES[_row, (3 * _row + 1) % N_TARGETS] = True


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    return BertModel(config, add_pooling_layer=False).train()


def token_batch(rows: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids, right-padded to ``length`` (every row keeps at least 2 tokens)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 100, (rows, length), generator=generator) * mask
    return {"input_ids": ids, "attention_mask": mask}


def mean_pooled(model, batch) -> torch.Tensor:
    tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    return (tokens * mask).sum(1) / mask.sum(1)


def multi_positive_infonce(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``-mean_rows mean_{j ∈ P(i)} log softmax_j(scores_i)``."""
    log_probs = scores.log_softmax(dim=1)
    positives = positives.to(scores.device)
    per_row = (log_probs * positives).sum(1) / positives.sum(1)
    return -per_row.mean()


class SymmetricInfoNCE(torch.nn.Module):
    """Both directions as named parts, with a learnable temperature (a parameter of the loss itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_tau = torch.nn.Parameter(torch.tensor(math.log(TAU)))

    def forward(self, queries: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = F.normalize(queries, dim=-1) @ F.normalize(targets, dim=-1).T / self.log_tau.exp()
        return {
            "q2t": multi_positive_infonce(scores, POSITIVES),
            "t2q": multi_positive_infonce(scores.T, POSITIVES.T),
        }


def late_interaction_loss(queries, targets: torch.Tensor) -> torch.Tensor:
    """InfoNCE over ``s(q, t) = Σ_i softmax_i(c_i/τ) c_i``, ``c_i = cos(query token i, pooled target)``."""
    tokens, mask = (queries["tokens"], queries["mask"]) if isinstance(queries, dict) else queries
    cos = torch.einsum("qid,td->qti", F.normalize(tokens, dim=-1), F.normalize(targets, dim=-1))
    weights = (cos / TAU).masked_fill(~mask.bool()[:, None, :], float("-inf")).softmax(-1)
    return multi_positive_infonce((weights * cos).sum(-1) / TAU, POSITIVES)


def concatenate(reps):
    if isinstance(reps[0], torch.Tensor):
        return torch.cat(reps)
    if isinstance(reps[0], dict):
        return {key: torch.cat([rep[key] for rep in reps]) for key in reps[0]}
    return tuple(torch.cat(column) for column in zip(*reps, strict=True))


def uncached_step(encoders, sides, chunk_size, loss_fn, backward=torch.Tensor.backward) -> CachedLoss:
    encoders = [encoders] * len(sides) if callable(encoders) else encoders
    reps = [
        concatenate([encode(chunk) for chunk in split_batch(side, chunk_size)])
        for encode, side in zip(encoders, sides, strict=True)
    ]
    output = loss_fn(*reps)
    parts = output if isinstance(output, dict) else {}
    total = sum(parts.values()) if parts else output
    backward(total)
    return CachedLoss(total.detach(), {name: part.detach() for name, part in parts.items()})


def gradients(*modules) -> dict[str, torch.Tensor]:
    grads = {}
    for index, module in enumerate(modules):
        for name, param in module.named_parameters():
            assert param.grad is not None, f"no gradient for {name}"
            grads[f"{index}.{name}"] = param.grad.clone()
            param.grad = None
    return grads


def assert_same_gradients(cached, reference, tol=1e-5):
    """Every gradient within ``tol`` relative, or ``tol`` × the largest gradient entry (for ~0 gradients,
    such as the attention key bias, which softmax ignores)."""
    assert cached.keys() == reference.keys()
    scale = max(grad.abs().max().item() for grad in reference.values())
    for name, grad in reference.items():
        torch.testing.assert_close(cached[name], grad, rtol=tol, atol=tol * scale, msg=name)


def run_both(encoders, sides, chunk_size, loss_fn, modules, seed=7, **cache_options):
    """(cached result, cached gradients, uncached result, uncached gradients) from the same seed."""
    torch.manual_seed(seed)
    cached = GradCache(encoders, loss_fn, chunk_size=chunk_size, **cache_options)(*sides)
    cached_grads = gradients(*modules)
    torch.manual_seed(seed)
    reference = uncached_step(encoders, sides, chunk_size, loss_fn)
    return cached, cached_grads, reference, gradients(*modules)


QUERIES = token_batch(N_QUERIES, 12, seed=1)
TARGETS = token_batch(N_TARGETS, 9, seed=2)


@pytest.mark.parametrize("chunk_size", [3, 4, 16])
def test_pooled_infonce_equals_uncached(chunk_size):
    model, loss_fn = tiny_bert(), SymmetricInfoNCE()
    encode = lambda batch: mean_pooled(model, batch)  # noqa: E731
    cached, cached_grads, reference, reference_grads = run_both(
        encode, (QUERIES, TARGETS), chunk_size, loss_fn, (model, loss_fn)
    )
    assert cached.parts.keys() == {"q2t", "t2q"}
    for name, part in reference.parts.items():
        torch.testing.assert_close(cached.parts[name], part, rtol=1e-6, atol=0)
    torch.testing.assert_close(cached.loss, reference.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(cached.loss, cached.parts["q2t"] + cached.parts["t2q"])
    assert not cached.loss.requires_grad
    assert_same_gradients(cached_grads, reference_grads)  # including the loss's own temperature


@pytest.mark.parametrize("container", ["tuple", "dict"])
def test_late_interaction_equals_uncached(container):
    model = tiny_bert()

    def encode_tokens(batch):
        tokens = model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        return (tokens, mask) if container == "tuple" else {"tokens": tokens, "mask": mask}

    cached, cached_grads, reference, reference_grads = run_both(
        (encode_tokens, lambda batch: mean_pooled(model, batch)),
        (QUERIES, TARGETS),
        3,
        late_interaction_loss,
        (model,),
    )
    assert cached.parts == {}
    torch.testing.assert_close(cached.loss, reference.loss, rtol=1e-6, atol=0)
    assert_same_gradients(cached_grads, reference_grads)


def test_without_rng_replay_dropout_changes_the_gradients():
    model, loss_fn = tiny_bert(), SymmetricInfoNCE()
    encode = lambda batch: mean_pooled(model, batch)  # noqa: E731
    cached, cached_grads, reference, reference_grads = run_both(
        encode, (QUERIES, TARGETS), 4, loss_fn, (model, loss_fn), replay_rng=False
    )
    # the first pass is the same, the second one draws other dropout masks
    torch.testing.assert_close(cached.loss, reference.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(cached_grads["1.log_tau"], reference_grads["1.log_tau"], rtol=1e-5, atol=0)
    encoder = [name for name in reference_grads if name.startswith("0.")]
    difference = torch.cat([(cached_grads[name] - reference_grads[name]).flatten() for name in encoder])
    reference_norm = torch.cat([reference_grads[name].flatten() for name in encoder]).norm()
    assert difference.norm() / reference_norm > 0.1

    # without dropout nothing is random, and the unreplayed second pass is exact again
    model.eval()
    _, cached_grads, _, reference_grads = run_both(
        encode, (QUERIES, TARGETS), 4, loss_fn, (model, loss_fn), replay_rng=False
    )
    assert_same_gradients(cached_grads, reference_grads)


def test_eval_mode_equals_one_full_batch_forward():
    """Chunking itself is exact: without dropout the cached step equals one unchunked forward pass."""
    model, loss_fn = tiny_bert().eval(), SymmetricInfoNCE()
    encode = lambda batch: mean_pooled(model, batch)  # noqa: E731
    cached = GradCache(encode, loss_fn, chunk_size=3)(QUERIES, TARGETS)
    cached_grads = gradients(model, loss_fn)
    reference = uncached_step(encode, (QUERIES, TARGETS), max(N_QUERIES, N_TARGETS), loss_fn)
    torch.testing.assert_close(cached.loss, reference.loss, rtol=1e-6, atol=0)
    assert_same_gradients(cached_grads, gradients(model, loss_fn))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dropout_is_replayed():
    model, loss_fn = tiny_bert().cuda(), SymmetricInfoNCE().cuda()
    encode = lambda batch: mean_pooled(model, batch)  # noqa: E731
    sides = tuple({key: value.cuda() for key, value in side.items()} for side in (QUERIES, TARGETS))
    cached, cached_grads, reference, reference_grads = run_both(encode, sides, 4, loss_fn, (model, loss_fn))
    torch.testing.assert_close(cached.loss, reference.loss, rtol=1e-6, atol=0)
    assert_same_gradients(cached_grads, reference_grads)
    _, unreplayed_grads, _, reference_grads = run_both(
        encode, sides, 4, loss_fn, (model, loss_fn), replay_rng=False
    )
    name = "0.encoder.layer.1.output.dense.weight"
    assert (unreplayed_grads[name] - reference_grads[name]).norm() > 0.1 * reference_grads[name].norm()


def test_rng_state_replay_repeats_the_draws_and_leaves_the_outside_stream_alone():
    torch.manual_seed(3)
    state = RngState.capture()
    first = torch.rand(5)
    after_first = torch.rand(5)
    torch.manual_seed(3)
    torch.rand(5)
    with state.replay():
        torch.testing.assert_close(torch.rand(5), first, rtol=0, atol=0)
    # the draw after the block continues the stream as if the block had not run
    torch.testing.assert_close(torch.rand(5), after_first, rtol=0, atol=0)


def test_split_batch_keeps_structure_and_the_last_short_chunk():
    batch = {"input_ids": torch.arange(14).view(7, 2), "attention_mask": torch.ones(7, 2), "lang": "en"}
    chunks = split_batch(batch, 3)
    assert [batch_size(chunk) for chunk in chunks] == [3, 3, 1]
    assert all(chunk["lang"] == "en" for chunk in chunks)
    assert chunks[2]["input_ids"].tolist() == [[12, 13]]
    pair = split_batch((torch.zeros(5, 4), torch.ones(5)), 2)
    assert isinstance(pair[0], tuple) and [part[1].shape[0] for part in pair] == [2, 2, 1]
    assert [chunk.shape[0] for chunk in split_batch(torch.zeros(4, 3), 4)] == [4]
    with pytest.raises(ValueError, match="positive integer"):
        split_batch(batch, 0)
    with pytest.raises(ValueError, match=r"common first \(row\) dimension, got sizes \[3, 4\]"):
        split_batch({"a": torch.zeros(3), "b": torch.zeros(4)}, 2)


def test_bad_encoders_and_losses_are_named():
    model = tiny_bert().eval()
    encode = lambda batch: mean_pooled(model, batch)  # noqa: E731
    loss = lambda q, t: (q @ t.T).mean()  # noqa: E731
    with pytest.raises(ValueError, match="positive integer"):
        GradCache(encode, loss, chunk_size=0)
    with pytest.raises(ValueError, match="2 encode functions for 1 sides"):
        GradCache([encode, encode], loss, chunk_size=4)(QUERIES)
    with pytest.raises(ValueError, match=r"shapes \[\(1, 32\)\] for a chunk of 4 rows"):
        GradCache(lambda batch: encode(batch)[:1], loss, chunk_size=4)(QUERIES, TARGETS)
    with pytest.raises(ValueError, match="tensor or a tuple/list/dict of tensors"):
        GradCache(lambda batch: [encode(batch), "x"], loss, chunk_size=4)(QUERIES, TARGETS)

    def trimmed_tokens(batch):  # each chunk cut to its own longest row: chunks cannot be concatenated
        width = int(batch["attention_mask"].sum(1).max())
        return model(**{key: value[:, :width] for key, value in batch.items()}).last_hidden_state

    with pytest.raises(ValueError, match="pad the inputs of a side to one length"):
        GradCache(trimmed_tokens, lambda q: q.mean(), chunk_size=3)(QUERIES)
    with pytest.raises(ValueError, match="does not depend on the representations"):
        GradCache(encode, lambda q, t: torch.tensor(1.0), chunk_size=4)(QUERIES, TARGETS)
    with pytest.raises(ValueError, match="scalar tensor or a dict of scalar tensors"):
        GradCache(encode, lambda q, t: q @ t.T, chunk_size=4)(QUERIES, TARGETS)


# ------------------------------------------------------------------------------------------- DeepSpeed


@pytest.fixture
def single_process_group(monkeypatch):
    """torch.distributed for one process (gloo on 127.0.0.1), torn down after the test."""
    deepspeed = pytest.importorskip("deepspeed")
    for name, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        monkeypatch.setenv(name, value)
    # DeepSpeed JIT-builds its CPU shared-memory op once: reuse the folder that the Makefile sets
    monkeypatch.setenv(
        "TORCH_EXTENSIONS_DIR",
        str(Path(__file__).resolve().parents[2] / ".cache" / "torch_extensions"),
    )
    deepspeed.init_distributed(dist_backend="gloo")
    yield deepspeed
    deepspeed.comm.destroy_process_group()


def deepspeed_engine(deepspeed, model):
    config = {
        "train_micro_batch_size_per_gpu": N_QUERIES,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def test_deepspeed_zero2_step_equals_uncached_step(single_process_group):
    deepspeed = single_process_group
    initial = tiny_bert().state_dict()

    def one_step(cached: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = tiny_bert()
        model.load_state_dict(initial)
        engine = deepspeed_engine(deepspeed, model)
        assert engine.zero_optimization_stage() == 2
        encode = lambda batch: mean_pooled(engine, batch)  # noqa: E731
        loss_fn = lambda q, t: multi_positive_infonce(  # noqa: E731
            F.normalize(q, dim=-1) @ F.normalize(t, dim=-1).T / TAU, POSITIVES
        )
        torch.manual_seed(11)
        if cached:
            cache = GradCache(encode, loss_fn, chunk_size=3, backward=engine.backward)
            with engine.coalesce_grad_reduction():
                result = cache(QUERIES, TARGETS)
        else:
            result = uncached_step(encode, (QUERIES, TARGETS), 3, loss_fn, backward=engine.backward)
        engine.step()
        return result.loss, {name: param.detach().clone() for name, param in engine.module.named_parameters()}

    cached_loss, cached_params = one_step(cached=True)
    plain_loss, plain_params = one_step(cached=False)
    torch.testing.assert_close(cached_loss, plain_loss, rtol=1e-6, atol=0)
    moved = 0
    for name, plain in plain_params.items():
        torch.testing.assert_close(cached_params[name], plain, rtol=1e-5, atol=1e-7, msg=name)
        moved += int(not torch.equal(plain, initial[name]))
    assert moved == len(plain_params)  # the step changed every parameter
