"""Decoding rows: greedy tokens/s beside transformers, time to first token, the weight-bandwidth
bound, and speculative decoding with a built pair (neojax.testing.pairs)."""
from __future__ import annotations

import itertools
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from neojax.benchmark.common import best, on_accelerator, row, torch_model
from neojax.flops import measure_bandwidth
from neojax.generate import decode_weights, generate
from neojax.model.quant import quantize_params
from neojax.testing.pairs import agreeing_pair


def bench_decode(config, params, batch, new_tokens=128, prompt_len=32, torch_too=True, rounds=3):
    """Greedy decode tokens/s after the first token: (generation of new_tokens - one token's).
    Rounds alternate neojax and transformers, and each side keeps its fastest run of each length,
    so that a slow spell of a shared machine does not fall on one side only."""
    prompts = [[1 + i % (config.vocab_size - 1) for i in range(prompt_len)]] * batch
    weights = decode_weights(params, config)  # made once, as a session generating repeatedly would
    sides = {"neojax": lambda n: generate(params, config, prompts, max_new_tokens=n, stop_tokens=(), weights=weights)}
    if torch_too:
        import torch  # deferred: the reference is optional (requirements-test.txt)
        model = torch_model(config, params)
        ids = torch.tensor(prompts)

        def hf(n):
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=0)
        sides["transformers"] = hf
    best = {(side, n): float("inf") for side in sides for n in (new_tokens, 1)}
    for side, run in sides.items():  # warm-up: compiles
        run(new_tokens), run(1)
    # the 1-token run is mostly prefill: on a small model a noisy spell can make it the slower of the
    # two, so after `rounds` rounds, up to 8 more run until every side's difference is positive
    positive = lambda: all(best[side, new_tokens] > best[side, 1] for side in sides)
    for done in itertools.count(1):
        for (side, n) in best:
            start = time.perf_counter()
            sides[side](n)
            best[side, n] = min(best[side, n], time.perf_counter() - start)
        if done == rounds + 8 or (done >= rounds and positive()):
            break
    rate = {side: batch * (new_tokens - 1) / (best[side, new_tokens] - best[side, 1]) for side in sides}
    return rate["neojax"], rate.get("transformers")


def decode_weight_bytes(params, config) -> int:
    """Bytes of weights a decode step reads: every kernel and the tied head (whole), in the form
    generate multiplies by (compute-dtype copies; int8 stays int8), and the scales."""
    dtype = jnp.dtype(config.dtype).itemsize
    total = 0
    for path, x in flax.traverse_util.flatten_dict(params).items():
        if path[-1] in ("kernel", "kernel_scale") or path[0] in ("wte", "wte_scale"):
            total += x.size * (x.dtype.itemsize if x.dtype in (np.int8,) or x.ndim == 1 else dtype)
    return total


def bench_speculative(config, params, k=4, new_tokens=128, prompt_len=32, rounds=2, residual=0.02):
    """Greedy decode at batch 1 with and without a draft (agreeing_pair) proposing k tokens a
    round: (tokens/s without, with, the share of proposals kept). The texts must agree."""
    target, draft = agreeing_pair(config, params, residual=residual)
    prompt = [list(range(1, prompt_len + 1))]
    weights = decode_weights(target, config)
    plain = lambda: generate(target, config, prompt, max_new_tokens=new_tokens, stop_tokens=(), weights=weights)
    drafted = lambda: generate(target, config, prompt, max_new_tokens=new_tokens, stop_tokens=(), weights=weights,
                               draft=draft, draft_tokens=k)
    want, got = plain(), drafted()  # warm-up: compiles
    if got.tokens != want.tokens:
        raise AssertionError("speculative decoding changed the greedy output")
    best = {"plain": float("inf"), "drafted": float("inf")}
    for _ in range(rounds):
        for side, run in (("plain", plain), ("drafted", drafted)):
            start = time.perf_counter()
            run()
            best[side] = min(best[side], time.perf_counter() - start)
    return new_tokens / best["plain"], new_tokens / best["drafted"], got.acceptance


def bench_ttft(config, params, prompt_len=512):
    """Seconds to the first new token at batch 1 (prefill): (prompt length, seconds); the prompt
    is shortened to half the context for models with fewer positions."""
    prompt_len = min(prompt_len, config.max_position_embeddings // 2)
    prompt = [list(np.random.default_rng(0).integers(0, config.vocab_size, prompt_len))]
    weights = decode_weights(params, config)
    return prompt_len, best(lambda: generate(params, config, prompt, max_new_tokens=1, stop_tokens=(),
                                              weights=weights))


def rows(run) -> None:
    args, config, name = run.args, run.config, run.name
    plain = {}  # batch -> tokens/s of config's own dtype, unplaced: the --quantize rows reuse it
    work = run.work
    for batch in args.decode_batches:
        ours, theirs = bench_decode(config, run.placed, batch, work.new_tokens, torch_too=run.torch_too,
                                    rounds=work.rounds)
        plain[batch] = ours if not run.on else None
        run.add(row(f"greedy decode {name} {args.dtype}{run.on} batch {batch} ({work.new_tokens} new tokens)",
                    "tokens/s", ours, theirs))
    prompt_len, seconds = bench_ttft(config, run.params)
    run.add(row(f"time to first token, {prompt_len}-token prompt, batch 1", "s", seconds))
    if args.quantize:
        _quantized_rows(run, plain)
    for kv in ("auto", "int8") if args.kv_context else ():
        for batch in args.decode_batches:
            ours, _ = bench_decode(config.replace(kv_cache=kv), run.params, batch, work.new_tokens,
                                   prompt_len=args.kv_context - work.new_tokens, torch_too=False,
                                   rounds=min(2, work.rounds))
            run.add(row(f"greedy decode {name} {args.dtype} batch {batch} at a {args.kv_context}-token context, "
                        f"KV cache {'int8' if kv == 'int8' else args.dtype}", "tokens/s", ours))


def _quantized_rows(run, plain: dict) -> None:
    """int8 weights (and the other float dtype on a CPU) against the weight-bandwidth bound."""
    args, config, params = run.args, run.config, run.params
    bandwidth = measure_bandwidth()
    run.add(row("weight-streaming bandwidth (1-row product with a 256 MB float32 matrix)", "GB/s", bandwidth / 1e9))
    variants = [(args.dtype, config, params),
                (f"int8 weights ({args.dtype} compute)", config, jax.device_get(quantize_params(params)))]
    if not on_accelerator():  # the other float dtype too: XLA:CPU converts bfloat16 weights as it goes
        other = "bfloat16" if args.dtype == "float32" else "float32"
        variants.insert(1, (other, config.replace(dtype=other), params))
    for label, cfg, p in variants:
        step_bytes = decode_weight_bytes(p, cfg)
        bound = bandwidth / step_bytes
        run.add(row(f"decode bound {run.name} {label}: weight bytes a step {step_bytes / 1e6:.0f} MB / bandwidth",
                    "tokens/s", bound))
        for batch in args.decode_batches:
            reuse = cfg is config and p is params and plain[batch] is not None
            ours = plain[batch] if reuse else bench_decode(cfg, p, batch, run.work.new_tokens, torch_too=False,
                                                           rounds=run.work.rounds)[0]
            share = 100 * ours / batch / bound
            run.add(row(f"greedy decode {run.name} {label} batch {batch} (steps at {share:.0f}% of the bound's "
                        "rate)", "tokens/s", ours))
