"""Chat data: the template's loss mask, packing with segment ids that keep examples apart, and a
packed fine-tune + chat session from the command line."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import device_env

from neojax.finetune.chat import encode_conversation, pack, read_conversations, render_prompt
from neojax.model import GPTNeo, GPTNeoConfig, init_params
from neojax.train.step import batch_loss

CFG = GPTNeoConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                   window_size=4, local_block_size=2, global_block_size=4, max_position_embeddings=40,
                   initializer_range=0.3)


def test_template_masks_exactly_the_answers(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "See you."}]
    ids, mask = encode_conversation(tiny_tokenizer, messages)
    eos = tiny_tokenizer.eos_id
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == tiny_tokenizer.encode(" Hello!") + [eos] + tiny_tokenizer.encode(" See you.") + [eos]
    assert tiny_tokenizer.decode(ids).startswith("Be brief.\n\nUser: Hi\nAssistant: Hello!")
    assert render_prompt(messages[:4]) == "Be brief.\n\nUser: Hi\nAssistant: Hello!User: Bye\nAssistant:"


def test_pack_segments_and_truncation():
    examples = [([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1]), ([6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 1, 1, 1])]
    out = pack(examples, 6)
    np.testing.assert_array_equal(out["tokens"], [[1, 2, 3, 4, 5, 0], [7, 8, 9, 10, 11, 12]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out["loss_mask"], [[0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 1, 1]])  # last tokens kept


def _two_examples(seed=0, la=13, lb=11):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 50, size=la), rng.integers(1, 50, size=lb)


@pytest.mark.slow
def test_packed_examples_see_only_themselves():
    """Logits of each example inside a pack equal those of the example alone (global + local layers,
    examples longer than the window and the blocks)."""
    params = init_params(CFG, jax.random.key(0))
    a, b = _two_examples()
    row = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * len(a) + [2] * len(b) + [0, 0]])
    packed = np.asarray(GPTNeo(CFG).apply({"params": params}, row, segment_ids=seg))
    alone_a = np.asarray(GPTNeo(CFG).apply({"params": params}, a[None]))
    alone_b = np.asarray(GPTNeo(CFG).apply({"params": params}, b[None]))
    np.testing.assert_allclose(packed[0, :len(a)], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, len(a):len(a) + len(b)], alone_b[0], atol=1e-5)


@pytest.mark.slow
def test_a_prompt_token_never_changes_another_examples_gradient():
    params = init_params(CFG, jax.random.key(0))
    a, b = _two_examples(1)
    tokens = np.concatenate([a, b])[None]
    seg = np.array([[1] * len(a) + [2] * len(b)])
    only_b = np.array([[0] * len(a) + [0, 0, 0] + [1] * (len(b) - 3)])  # b's "response" tokens
    grad = jax.jit(jax.grad(lambda p, t, m: batch_loss(p, CFG, {"tokens": t, "loss_mask": m, "segment_ids": seg})[0]))
    changed = tokens.copy()
    changed[0, 2] = (changed[0, 2] + 7) % 50  # a prompt token of example a
    g1, g2 = grad(params, tokens, only_b), grad(params, changed, only_b)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    only_a = np.array([[0, 0, 0] + [1] * (len(a) - 3) + [0] * len(b)])
    assert max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(grad(params, tokens, only_a)),
                                                            jax.tree.leaves(grad(params, changed, only_a)))) > 1e-4


@pytest.mark.slow
def test_response_only_loss_is_the_mean_over_masked_targets_in_float64():
    params = init_params(CFG, jax.random.key(0))
    a, b = _two_examples(2)
    tokens = np.concatenate([a, b])[None]
    seg = np.array([[1] * len(a) + [2] * len(b)])
    mask = (np.random.default_rng(0).random(tokens.shape) < 0.5).astype(np.int32)
    mask[0, len(a)] = 1  # b's first token: masked in anyway, as it cannot be predicted from a
    loss, aux = batch_loss(params, CFG, {"tokens": tokens, "loss_mask": mask, "segment_ids": seg})
    logits = np.asarray(GPTNeo(CFG).apply({"params": params}, tokens[:, :-1], segment_ids=seg[:, :-1]), np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1,
                                                                                                               keepdims=True)
    targets = tokens[0, 1:]
    keep = (mask[0, 1:] == 1) & (seg[0, 1:] == seg[0, :-1])
    ref = -logp[np.arange(len(targets)), targets][keep].mean()
    assert float(aux["tokens"]) == keep.sum()
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_linear_attention_refuses_packed_segments():
    cfg = CFG.replace(attention_types=[[["linear", "local"], 1]])
    params = init_params(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\['linear'\] cannot keep packed examples apart"):
        GPTNeo(cfg).apply({"params": params}, np.ones((1, 6), np.int32), segment_ids=np.ones((1, 6), np.int32))


def test_bad_conversations_name_the_format(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:1: expected .*role"):
        read_conversations(str(tmp_path / "c.jsonl"))


@pytest.mark.slow
def test_packed_chat_finetune_then_chat_from_the_command_line(tiny_hf_with_tokenizer, tmp_path):
    rng = np.random.default_rng(0)
    with open(tmp_path / "chats.jsonl", "w") as f:
        for i in range(40):
            n = int(rng.integers(1, 9))
            f.write(json.dumps({"prompt": f"What is {n} plus one?", "response": f"It is {n + 1}."}) + "\n")
    env = device_env(1)
    workdir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "neojax.train", "--config", "finetune_chat", "--workdir", str(workdir),
                        f"--config.model.init_from={tiny_hf_with_tokenizer}",
                        f"--config.data.source_args.paths={tmp_path / 'chats.jsonl'}", "--config.data.seq_len=64",
                        "--config.data.valid_fraction=0.2", "--config.train.total_steps=6",
                        "--config.train.global_batch=4",
                        "--config.train.log_every=3", "--config.eval.every_steps=6",
                        "--config.checkpoint.every_steps=6",
                        "--config.optimizer.lr=1e-3", "--config.optimizer.warmup_steps=1"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "valid @ 6: loss" in r.stdout and "step 6/6" in r.stdout
    r = subprocess.run([sys.executable, "-m", "neojax.generate", "--checkpoint", str(workdir), "--chat",
                        "--max_new_tokens", "8", "--system", "Answer with a number."],
                       input="What is 2 plus one?\nAnd 3?\n\n", capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Assistant:") == 2


def test_chat_data_takes_the_data_transform_in_both_modes(tiny_tokenizer, tmp_path):
    """Counterfactual augmentation of chat data: every message's content is swapped; "also" adds the
    swapped conversation after its original (when it changes), "instead" trains on the swaps only."""
    from neojax.finetune.chat import build_chat_data
    from neojax.train.config import base_config
    path = tmp_path / "chats.jsonl"
    chats = [[{"role": "user", "content": "Is he my brother?"}, {"role": "assistant", "content": "He is."}],
             [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."}]]
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    rows = {}
    for mode in ("", "also", "instead"):
        c = base_config()
        c.data.update(source="chat", source_args={"paths": str(path)}, seq_len=63, valid_fraction=0.0,
                      transform="counterfactual" if mode else "", transform_mode=mode or "also")
        c.train.global_batch = 1
        train, _ = build_chat_data(c, tiny_tokenizer, CFG.replace(max_position_embeddings=64))
        texts = [tiny_tokenizer.decode([t for t in row if t != tiny_tokenizer.eos_id])
                 for row in train.packed["tokens"]]
        rows[mode] = "".join(texts)
    assert "brother" in rows[""] and "sister" not in rows[""]
    assert "Is he my brother?" in rows["also"] and "Is she my sister?" in rows["also"] and "She is." in rows["also"]
    assert "sister" in rows["instead"] and "brother" not in rows["instead"] and "Four." in rows["instead"]
