"""A tiny causal LM for the generation tests: random Llama weights, a BPE tokenizer trained on ESCO text."""

from __future__ import annotations

from pathlib import Path

import pytest

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""Each message as ``<|role|>`` + content + ``</s>``; the generation prompt opens the assistant turn."""
TRAINING_LINES = 400


def training_lines(limit: int = TRAINING_LINES) -> list[str]:
    """The tokenizer's training text: the prompt templates' lines, then preferred labels and descriptions
    of the built-in ESCO sample (``limit`` lines in all)."""
    from workembed.synth.templates import TEMPLATES
    from workembed.taxonomy import load_esco

    lines = [
        line for t in TEMPLATES.values() for text in (t.system, t.user, t.item) for line in text.split("\n")
    ]
    for skill in load_esco("builtin").skills.values():
        lines.extend(text for text in (skill.preferred_label, skill.description) if text)
    return [line for line in lines if line.strip()][:limit]


def build_tiny_llm(folder: Path, chat_template: bool = True, seed: int = 0) -> Path:
    """Save a random Llama (hidden 64, 2 layers, one head of dimension 64) and its tokenizer in ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(training_lines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """The tiny LLM with a chat template, built once per test session."""
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


def script_llm(source: Path, folder: Path, pairs: list[tuple[list[dict], str]], seed: int = 0) -> Path:
    """Fine-tune the tiny LLM in ``source`` until greedy decoding answers each chat (``messages``) of
    ``pairs`` with its text exactly, and save it in ``folder``: a model whose outputs a test knows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    sequences = []
    for messages, answer in pairs:
        chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        sequences.append(
            (tokenizer(chat)["input_ids"], [*tokenizer(answer)["input_ids"], tokenizer.eos_token_id])
        )
    length = max(len(prompt) + len(answer) for prompt, answer in sequences)
    ids = torch.full((len(sequences), length), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), length), -100)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, (prompt, answer) in enumerate(sequences):
        end = len(prompt) + len(answer)
        ids[row, :end] = torch.tensor(prompt + answer)
        labels[row, len(prompt) : end] = torch.tensor(answer)  # the loss covers the answer only
        mask[row, :end] = 1
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(40):
        model.train()
        for _ in range(25):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if all(_greedy(model, prompt, len(answer)) == answer for prompt, answer in sequences):
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            return folder
    raise AssertionError(f"the tiny LLM did not learn its script (last loss {loss.item():.4f})")


def _greedy(model, prompt: list[int], tokens: int) -> list[int]:
    import torch

    model.eval()
    with torch.inference_mode():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=tokens + 2, do_sample=False)
    return output[0, len(prompt) :].tolist()
