"""Prompt/response (instruction, chat) data: one plain-text template for training and for
`python -m neojax.generate --chat`, loss on response tokens only, and packing that keeps
examples apart (segment ids: no attention across examples, positions restart per example).

    python -m neojax.train --config experiments/finetune_chat.py --workdir /tmp/chat \
        --config.model.init_from=/models/gpt-neo-125M --config.data.source_args.paths='chats/*.jsonl'

jsonl records: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
or {"prompt": "...", "response": "..."}. GPT-Neo has no chat tokens, so the template is text:

    {system}\\n\\n            (optional)
    User: {content}\\n
    Assistant: {content}<|endoftext|>     <- only " {content}<|endoftext|>" is trained on
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from neojax import registry
from neojax.data import transforms
from neojax.data.pipeline import ArrayBatches
from neojax.data.sources import DataError, json_lines
from neojax.data.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
STOP = "\nUser:"  # where a generated answer ends if the model forgets the EOS


def read_conversations(paths) -> list[list[dict]]:
    conversations = []
    for where, record in json_lines(paths):
        if isinstance(record, dict) and "prompt" in record and "response" in record:
            record = {"messages": [{"role": "user", "content": record["prompt"]},
                                   {"role": "assistant", "content": record["response"]}]}
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages or any(
                not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)
                for m in messages):
            raise DataError(f"{where}: expected {{\"messages\": [{{\"role\": one of {list(ROLES)}, "
                            "\"content\": str}, ...]} or {\"prompt\", \"response\"}")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: no assistant message: nothing to train on")
        conversations.append(messages)
    if not conversations:
        raise DataError(f"{paths}: no conversations")
    return conversations


def _pieces(messages, prompt_only: bool = False):
    """(text, trained) pieces of the template."""
    out = []
    for m in messages:
        if m["role"] == "system":
            out.append((m["content"] + "\n\n", False))
        elif m["role"] == "user":
            out.append((f"User: {m['content']}\n", False))
        else:
            out += [("Assistant:", False), (" " + m["content"], True)]
    if prompt_only:
        out.append(("Assistant:", False))
    return out


def render_prompt(messages) -> str:
    """The conversation so far, ending where the assistant's next answer starts."""
    return "".join(text for text, _ in _pieces(messages, prompt_only=True))


def encode_conversation(tokenizer: Tokenizer, messages) -> tuple[list[int], list[int]]:
    """Token ids and a loss mask (1 on assistant answers and the EOS that ends each)."""
    ids, mask = [], []
    for text, trained in _pieces(messages):
        piece = tokenizer.encode(text) + ([tokenizer.eos_id] if trained else [])
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def pack(examples: Sequence[tuple[list[int], list[int]]], length: int) -> dict[str, np.ndarray]:
    """Greedy in-order packing into rows of `length`: tokens, loss_mask and segment_ids (1, 2, ...
    per example in a row; 0 = padding). An example longer than a row keeps its last tokens."""
    rows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for ids, mask in examples:
        ids, mask = ids[-length:], mask[-length:]
        if used + len(ids) > length:
            rows.append([])
            used = 0
        rows[-1].append((ids, mask))
        used += len(ids)
    out = {k: np.zeros((len(rows), length), np.int32) for k in ("tokens", "loss_mask", "segment_ids")}
    for r, row in enumerate(rows):
        col = 0
        for seg, (ids, mask) in enumerate(row, 1):
            out["tokens"][r, col:col + len(ids)] = ids
            out["loss_mask"][r, col:col + len(ids)] = mask
            out["segment_ids"][r, col:col + len(ids)] = seg
            col += len(ids)
    return out


@registry.register("batch_source", "chat")
def build_chat_data(config, tokenizer: Tokenizer, model_config):
    """(train batches, fixed valid batches) from data.source_args: paths (and optional valid_paths;
    otherwise data.valid_fraction of the conversations)."""
    d, t = config.data, config.train
    args = dict(d.source_args)
    if "paths" not in args:
        raise ValueError("data.source='chat' needs data.source_args.paths (jsonl conversations)")
    if d.seq_len > model_config.max_position_embeddings:
        raise ValueError(f"data.seq_len={d.seq_len} exceeds max_position_embeddings="
                         f"{model_config.max_position_embeddings}")
    conversations = read_conversations(args["paths"])
    if args.get("valid_paths"):
        valid = read_conversations(args["valid_paths"])
    else:
        order = np.random.default_rng(d.seed).permutation(len(conversations))
        n_valid = int(round(d.valid_fraction * len(conversations)))
        valid = [conversations[i] for i in order[:n_valid]]
        conversations = [conversations[i] for i in order[n_valid:]]
    if d.transform:  # every message's content, e.g. counterfactual augmentation (neojax.data.transforms)
        change = transforms.build(d.transform, dict(d.transform_args))
        swapped = lambda conv: [{**m, "content": change(m["content"])} for m in conv]
        conversations = list(transforms.apply(conversations, swapped, d.transform_mode))
    encode = lambda convs: pack([encode_conversation(tokenizer, c) for c in convs], d.seq_len + 1)
    train = ArrayBatches(encode(conversations), t.global_batch, d.seed, jax.process_index(), jax.process_count())
    valid_batches = []
    if valid:
        packed, size = encode(valid), min(t.global_batch, 8)
        valid_batches = [{k: v[i:i + size] for k, v in packed.items()}
                         for i in range(0, max(len(packed["tokens"]) - size, 0) + 1, size)][:config.eval.valid_batches]
    return train, valid_batches
