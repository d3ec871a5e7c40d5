"""Generation: transformers parity, cache == full forward, sampling filters, stops, streaming, CLI."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import device_env, exit_of

from neojax import checkpoint
from neojax.checkpoint.hf import load_hf
from neojax.generate import apply_repetition_penalty, generate
from neojax.generate.loop import _generate_program, _phase_ends
from neojax.infer.cache import grow_cache
from neojax.infer.programs import decode_step, prefill
from neojax.infer.sampling import filter_logits
from neojax.infer.weights import transposed_kernels
from neojax.model import GPTNeo, preset


def _transformers_greedy(torch_model, prompts, n):
    """transformers' greedy `generate` of n new tokens per prompt, left padded as one batch."""
    import torch
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch_model.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = torch_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                   pad_token_id=0)
    return ref[:, width:].tolist()


def test_greedy_matches_transformers_generate_batched(hf_dirs):
    directory, torch_model, _ = hf_dirs["window7_inner40"]
    config, params, _ = load_hf(directory)
    prompts = [[5, 9, 3], list(range(1, 15)), [7, 7, 2, 40, 11, 8, 1, 3, 9]]
    ours = generate(params, config, prompts, max_new_tokens=20, stop_tokens=())
    assert ours.tokens == _transformers_greedy(torch_model, prompts, 20)


@pytest.mark.slow
def test_phased_greedy_matches_transformers_across_the_window(hf_dirs):
    """150 new tokens after 70-100-token prompts run in 4 phases of growing caches (192 to 288
    slots): the local layer's cache grows into its 256-entry ring and wraps in the last phases."""
    directory, torch_model, _ = hf_dirs["default_window"]
    config, params, _ = load_hf(directory)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(1, config.vocab_size, n).tolist() for n in (70, 100, 85)]
    assert _phase_ends(160, len(prompts), 128, config) == [64, 96, 128, 160]
    ours = generate(params, config, prompts, max_new_tokens=150, stop_tokens=())
    assert ours.tokens == _transformers_greedy(torch_model, prompts, 150)


def test_phases_only_where_caches_are_a_good_part_of_a_step():
    config = preset("gpt-neo-125M")  # 124M weights; 16 rows x 160 slots of caches = 47M values
    assert _phase_ends(128, 16, 32, config) == [32, 64, 96, 128]
    assert _phase_ends(128, 1, 32, config) == [128]  # 3M values: not worth compiling 4 loops
    assert _phase_ends(32, 16, 32, config) == [32]
    assert _phase_ends(1024, 16, 32, config) == [256, 512, 768, 1024]


@pytest.mark.slow
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape,prompt_len,steps", [("default_window", 250, 14), ("window7_inner40", 4, 30)])
def test_cached_decoding_equals_full_forward_at_every_step(hf_dirs, shape, prompt_len, steps, transposed):
    """Teacher-forced decode across the local window boundary, with a left-padded row; with the
    [out, in] weight copies that generate uses on CPUs, and without. The cache starts 2 slots
    longer than the prompt and is grown after 2 steps, as generate's phases do: at the default
    window the local layer grows from 255 entries to its 256-entry ring, which then wraps."""
    directory, _, _ = hf_dirs[shape]
    config, params, _ = load_hf(directory)
    rng = np.random.default_rng(0)
    total = prompt_len + steps
    seqs = rng.integers(0, config.vocab_size, size=(2, total))
    pad = 3
    tokens = np.concatenate([np.zeros((2, pad), np.int64), seqs], axis=1)
    mask = np.ones_like(tokens)
    mask[0, :pad] = 0  # row 0 left padded by 3 ...
    tokens[1, :pad] = seqs[1, :pad]  # ... row 1 has 3 more real tokens instead
    mask[1, :] = 1
    full = jax.jit(GPTNeo(config).apply)({"params": params}, tokens, attention_mask=mask)
    P = pad + prompt_len
    logits, cache, position = jax.jit(prefill, static_argnums=(1, 4))(params, config, tokens[:, :P], mask[:, :P],
                                                                       P + 2)
    step = jax.jit(decode_step, static_argnums=1)
    weights_t = transposed_kernels(params) if transposed else None
    worst = float(jnp.abs(logits - full[:, P - 1]).max())
    for i in range(steps - 1):
        if i == 2:
            cache = grow_cache(cache, config, P + steps)
            assert cache[0]["k"].shape[2] == P + steps
        position = position + 1
        logits, cache = step(params, config, cache, jnp.asarray(tokens[:, P + i]), position, P + i, weights_t)
        worst = max(worst, float(jnp.abs(logits - full[:, P + i]).max()))
    print(f"{shape}: max |cached - full| over {steps} steps = {worst:.3g}")
    assert worst < 1e-4


def _weight_conversions(fn, *args, size):
    """float32 -> bfloat16 conversions of arrays of at least `size` elements in fn's program."""
    def inner(value):  # the jaxprs of pjit, while, cond... (Jaxpr or ClosedJaxpr params)
        if hasattr(value, "eqns"):
            yield value
        elif hasattr(getattr(value, "jaxpr", None), "eqns"):
            yield value.jaxpr
        elif isinstance(value, (tuple, list)):
            for v in value:
                yield from inner(v)

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "convert_element_type":
                x = eqn.invars[0].aval
                if x.dtype == jnp.float32 and x.size >= size and eqn.outvars[0].aval.dtype == jnp.bfloat16:
                    yield x.shape
            for sub in (j for v in eqn.params.values() for j in inner(v)):
                yield from walk(sub)
    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@pytest.mark.slow
def test_bfloat16_decode_steps_convert_no_weights(hf_dirs):
    """generate's weight copies carry the compute dtype: a bfloat16 step then converts no float32
    kernel or head (each token did before), with the same logits as a step on the float32 params."""
    directory, _, _ = hf_dirs["window7_inner40"]
    config, params, _ = load_hf(directory)
    config = config.replace(dtype="bfloat16")
    copies = transposed_kernels(params, config.dtype)
    assert {x.dtype for x in jax.tree.leaves(copies)} == {jnp.dtype(jnp.bfloat16)} and "wte" in copies
    tokens = np.tile(np.arange(1, 9), (2, 1))
    _, cache, position = jax.jit(lambda p, t: prefill(p, config, t, jnp.ones_like(t), 12))(params, tokens)
    step = lambda params, weights: decode_step(params, config, cache, jnp.asarray([3, 5]), position + 1, 8, weights)
    size = config.hidden_size ** 2
    assert len(_weight_conversions(step, params, None, size=size)) >= 4 * config.num_layers + 1  # the baseline
    assert _weight_conversions(step, params, copies, size=size) == []
    with_copies, without = jax.jit(step)(params, copies)[0], jax.jit(step)(params, None)[0]  # one program each
    assert with_copies.dtype == jnp.float32
    scale = float(jnp.abs(without).max())
    np.testing.assert_allclose(np.asarray(with_copies), np.asarray(without), atol=2e-2 * scale)
    assert (np.argmax(with_copies, -1) == np.argmax(without, -1)).all()


@pytest.mark.slow
def test_local_cache_is_a_window_sized_ring(hf_dirs):
    directory, _, _ = hf_dirs["default_window"]
    config, params, _ = load_hf(directory)
    _, cache, _ = prefill(params, config, np.ones((1, 300), np.int32), np.ones((1, 300), np.int32), 310)
    assert cache[0]["k"].shape[2] == 310  # global layer: every slot ([batch, heads, slots, head_dim])
    assert cache[1]["k"].shape[2] == 256  # local layer: a ring of window entries


def test_sampling_is_reproducible_and_seed_dependent(hf_dirs):
    directory, _, _ = hf_dirs["window7_inner40"]
    config, params, _ = load_hf(directory)
    kw = dict(max_new_tokens=12, temperature=1.5, top_k=20, top_p=0.95, stop_tokens=())
    a = generate(params, config, [[1, 2, 3]] * 3, seed=7, **kw).tokens
    assert a == generate(params, config, [[1, 2, 3]] * 3, seed=7, **kw).tokens
    assert a != generate(params, config, [[1, 2, 3]] * 3, seed=8, **kw).tokens
    assert len({tuple(r) for r in a}) > 1  # rows of one batch draw independently
    # a row's draws depend on its seed, index and step alone: not on the rows beside it or the padding
    longer = generate(params, config, [[1, 2, 3], [1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12]], seed=7, **kw).tokens
    assert longer[:2] == a[:2]


@pytest.mark.slow
def test_filters_never_keep_excluded_tokens():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.3, 0.1, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]]))
    one = jnp.float32(1.0)
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))
    assert kept(temperature=one, top_k=jnp.int32(2), top_p=one)[0].tolist() == [False, True, True, False, False]
    # nucleus: 0.5 + 0.3 >= 0.7 -> {1, 2}; 0.5 alone is not enough
    assert kept(temperature=one, top_k=jnp.int32(0), top_p=jnp.float32(0.7))[0].tolist() == [False, True, True, False,
                                                                                             False]
    assert kept(temperature=one, top_k=jnp.int32(0), top_p=jnp.float32(0.5))[0].tolist() == [False, True, False, False,
                                                                                             False]
    assert kept(temperature=one, top_k=jnp.int32(0), top_p=one).all()
    # sampled tokens respect the filter
    # top-p acts on the renormalised top-3 (0.556, 0.333, 0.111): 0.95 keeps all three, 0.85 two
    filtered = filter_logits(jnp.tile(logits[:1], (4000, 1)), one, jnp.int32(3), jnp.float32(0.95))
    draws = np.asarray(jax.random.categorical(jax.random.key(0), filtered))
    assert set(draws.tolist()) <= {1, 2, 3} and len(set(draws.tolist())) == 3
    narrower = filter_logits(logits[:1], one, jnp.int32(3), jnp.float32(0.85))
    assert np.isfinite(np.asarray(narrower))[0].tolist() == [False, True, True, False, False]


def test_repetition_penalty_matches_transformers():
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 30)).astype(np.float32)
    ids = np.array([[1, 4, 4, 9], [0, 29, 3, 2]])
    seen = np.zeros((2, 30), bool)
    np.put_along_axis(seen, ids, True, axis=1)
    ours = apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), 1.3)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(ids), torch.tensor(logits)).numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6)


def test_stop_strings_streaming_and_text(tiny_hf_with_tokenizer):
    model = checkpoint.load(tiny_hf_with_tokenizer)
    free = generate(model.params, model.config, ["Once upon a time"], model.tokenizer, max_new_tokens=24,
                    stop_tokens=())
    text = free.texts[0]
    assert model.tokenizer.decode(free.tokens[0]) == text and len(free.tokens[0]) == 24
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip()
    pieces = []
    cut = generate(model.params, model.config, ["Once upon a time"], model.tokenizer, max_new_tokens=24,
                   stop_tokens=(), stop_strings=[stop], on_text=lambda row, piece: pieces.append(piece))
    assert cut.texts[0] == text[:text.find(stop)]
    assert "".join(pieces) == cut.texts[0]
    assert len(cut.tokens[0]) < 24  # the loop ended early
    # a stop token ends a row without being emitted
    first = free.tokens[0][3]
    halted = generate(model.params, model.config, ["Once upon a time"], model.tokenizer, max_new_tokens=24,
                      stop_tokens=[first])
    assert halted.tokens[0] == free.tokens[0][:free.tokens[0].index(first)]


def test_streaming_calls_in_threads_each_stream_their_own_text(tiny_hf_with_tokenizer):
    """The compiled loop's host callback finds its own call's watcher (by call number), so calls
    running at once in threads (a notebook's, a hook's) never stream into each other."""
    from concurrent.futures import ThreadPoolExecutor

    from neojax.generate import stream
    model = checkpoint.load(tiny_hf_with_tokenizer)
    prompts = ["Once upon a time", "def hello():", "The quick brown fox", "A B C D"]

    def streamed(prompt):
        pieces = []
        out = generate(model.params, model.config, [prompt], model.tokenizer, max_new_tokens=16, stop_tokens=(),
                       on_text=lambda row, piece: pieces.append(piece))
        return "".join(pieces), out.texts[0]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(streamed, prompts * 2))
    alone = [generate(model.params, model.config, [p], model.tokenizer, max_new_tokens=16, stop_tokens=()).texts[0]
             for p in prompts]
    assert [text for _, text in results] == alone * 2
    assert [pieces for pieces, _ in results] == alone * 2
    assert stream.WATCHERS == {}  # each call's watcher leaves with it


def test_one_compilation_per_bucket(hf_dirs):
    directory, _, _ = hf_dirs["window7_inner40"]
    config, params, _ = load_hf(directory)
    generate(params, config, [[1, 2, 3], [4, 5]], max_new_tokens=5)
    before = _generate_program._cache_size()
    generate(params, config, [[9, 8, 7, 6], [1]], max_new_tokens=9, temperature=0)
    generate(params, config, [[3], [2, 2, 2, 2, 2]], max_new_tokens=30, stop_tokens=[4, 5])
    assert _generate_program._cache_size() == before


def test_invalid_settings_and_long_prompts(hf_dirs):
    directory, _, _ = hf_dirs["window7_inner40"]
    config, params, _ = load_hf(directory)
    for kw, msg in [(dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-1.0), "temperature"),
                    (dict(top_k=-2), "top_k"), (dict(max_new_tokens=0), "max_new_tokens")]:
        with pytest.raises(ValueError, match=msg):
            generate(params, config, [[1, 2]], **kw)
    long = list(range(1, 60))  # max_position_embeddings is 64
    with pytest.raises(ValueError, match="prompt 0 has 59 tokens.*truncate=True"):
        generate(params, config, [long], max_new_tokens=10)
    out = generate(params, config, [long], max_new_tokens=10, truncate=True, stop_tokens=())
    assert out.prompt_tokens[0] == long[-54:] and len(out.tokens[0]) == 10
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(params, config, [[1, 2, 999]], max_new_tokens=3)


def _cli(*args, stdin=None):
    """As a user runs it: the machine's one CPU device."""
    return subprocess.run([sys.executable, "-m", "neojax.generate", *args], capture_output=True, text=True,
                          input=stdin, timeout=300, env=device_env(1))


@pytest.mark.slow
def test_cli_streams_batches_and_chats(tiny_hf_with_tokenizer, tmp_path, capsys):
    model = checkpoint.load(tiny_hf_with_tokenizer)
    expected = generate(model.params, model.config, ["The quick"], model.tokenizer, max_new_tokens=8).texts[0]
    r = _cli("--checkpoint", tiny_hf_with_tokenizer, "--prompt", "The quick", "--max_new_tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "The quick" + expected + "\n"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon\ndef hello\n")
    r = _cli("--checkpoint", tiny_hf_with_tokenizer, "--prompt_file", str(prompts), "--num_samples", "2",
             "--temperature", "0.8", "--top_p", "0.9", "--max_new_tokens", "6")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- [") == 4 and "--- [1.1] ---\ndef hello" in r.stdout
    r = _cli("--checkpoint", tiny_hf_with_tokenizer, "--interactive", "--max_new_tokens", "5",
             stdin="The quick\nbrown\n\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") == 3
    from neojax.generate.__main__ import main
    code, err = exit_of(main, ["--checkpoint", tiny_hf_with_tokenizer, "--prompt", "x", "--top_p", "2"], capsys)
    assert code == 2 and "argument --top_p: '2' is not a number in (0, 1]" in err


@pytest.mark.slow
def test_nothing_keeps_the_weights_after_generate(hf_dirs):
    """generate keeps no copy of the params (nor of their decode layout) once it returns: a training
    hook's params, say, are freed with the hook. A caller that generates repeatedly passes the
    copies it made once (weights=) and gets the same tokens."""
    import gc
    import weakref

    from neojax.generate import decode_weights
    directory, _, _ = hf_dirs["window7_inner40"]
    config, params, _ = load_hf(directory)
    config = config.replace(platform="cpu")
    params = jax.tree.map(jnp.asarray, params)
    once = generate(params, config, [[1, 2, 3]], max_new_tokens=8).tokens
    weights = decode_weights(params, config)
    assert weights is not None and generate(params, config, [[1, 2, 3]], max_new_tokens=8, weights=weights).tokens \
        == once
    gone = weakref.ref(jax.tree.leaves(params)[0])
    copies = weakref.ref(jax.tree.leaves(weights)[0])
    del params, weights
    gc.collect()
    assert gone() is None and copies() is None
