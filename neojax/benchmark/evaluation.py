"""Evaluation rows: harness requests per second on synthetic text, and the tokenizer's rate."""
from __future__ import annotations

import json
import os
import tempfile
import time

from neojax.benchmark.common import row, synthetic_text, synthetic_tokenizer
from neojax.evaluate import evaluate


def bench_tokenize(tokenizer, texts):
    start = time.perf_counter()
    n = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return n / (time.perf_counter() - start)


def bench_eval(config, params, lambada_docs=64, wiki_pages=2, wmt_docs=16, batch_size=8, translate=True):
    """Harness requests on synthetic text with a byte-level BPE trained here: lambada_openai
    examples/s (about 75 words each, as the real set), wikitext tokens/s (rolling windows over
    about 4,000-token pages) and wmt16-de-en examples/s (greedy generation until a newline, at most
    256 tokens); the second, warm run of each. Also the tokenizer's encode rate."""

    text = synthetic_text()
    lambada = [{"text": text(75)} for _ in range(lambada_docs)]
    pages = [{"page": "\n".join(text(100) for _ in range(40))} for _ in range(wiki_pages)]
    wmt = [{"translation": {"de": text(25), "en": text(25)}} for _ in range(wmt_docs)]
    with tempfile.TemporaryDirectory() as d:
        tokenizer = synthetic_tokenizer([r["text"] for r in lambada] + [p["page"] for p in pages], config, d)
        for name, rows in (("lambada_openai", lambada), ("wikitext", pages), ("wmt16-de-en", wmt)):
            with open(os.path.join(d, f"{name}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        run = lambda task: evaluate(params, config, tokenizer, [task], d, batch_size=batch_size)[task]
        translate = translate and config.max_position_embeddings > 2 * 256  # the task generates up to 256 tokens
        run("lambada_openai"), run("wikitext"), translate and run("wmt16-de-en")  # compiles every padded shape
        lam, wiki = run("lambada_openai"), run("wikitext")
        trans = run("wmt16-de-en") if translate else None
        return {"lambada": lam["n"] / lam["seconds"], "wikitext": wiki["tokens_scored"] / wiki["seconds"],
                **({"wmt": trans["n"] / trans["seconds"], "wmt_tokens": trans["tokens_generated"] / trans["seconds"]}
                   if trans else {}),
                "tokenizer": bench_tokenize(tokenizer, [p["page"] for p in pages] * 20)}


def rows(run) -> None:
    label = f"{run.name} {run.args.dtype}{run.on}"
    work = run.work
    rates = bench_eval(run.config, run.placed, work.lambada_docs, work.wiki_pages, work.wmt_docs)
    run.add(row(f"evaluate lambada_openai {label} (batch 8)", "examples/s", rates["lambada"]))
    run.add(row(f"evaluate wikitext {label} (rolling windows)", "tokens/s", rates["wikitext"]))
    if "wmt" in rates:
        run.add(row(f"evaluate wmt16-de-en {label} (batch 8, greedy until newline)", "examples/s", rates["wmt"]))
        run.add(row(f"evaluate wmt16-de-en {label} generated", "tokens/s", rates["wmt_tokens"]))
    run.add(row("tokenizer: byte-level BPE, encode_batch", "tokens/s", rates["tokenizer"]))
