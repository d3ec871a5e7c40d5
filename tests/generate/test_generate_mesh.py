"""Generation on a mesh (8 simulated devices, and 2 real processes): greedy output is token for
token the single-device output and equals transformers', with rows split over `data` (padded to a
multiple of it) and heads over `tensor`; stop strings and streaming see only the real rows."""
import subprocess
import sys

import pytest
from support import device_env, finish, printed, processes
from test_generate import _transformers_greedy

from neojax import checkpoint, cli, sharding
from neojax.checkpoint.hf import load_hf
from neojax.generate import __main__ as generate_cli
from neojax.generate import generate

MESHES = ["data=8", "data=2,tensor=4", "tensor=2,data=4", "fsdp=2,tensor=2,data=2"]


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_greedy_on_a_mesh_equals_transformers(hf_dirs, mesh):
    directory, torch_model, _ = hf_dirs["default_window"]  # 4 heads
    config, params, _ = load_hf(directory)
    prompts = [[5, 9, 3], list(range(1, 15)), [7, 7, 2, 40, 11, 8, 1, 3, 9]]  # 3 rows: padded to the data axes
    placed = sharding.place(params, config, sharding.make_mesh(mesh))
    ours = generate(placed, config, prompts, max_new_tokens=20, stop_tokens=())
    assert ours.tokens == _transformers_greedy(torch_model, prompts, 20)
    assert len(ours.prompt_tokens) == 3


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data=8", "data=2,tensor=4"])
def test_stop_strings_and_streaming_on_a_mesh(tiny_hf_with_tokenizer, mesh):
    model = checkpoint.load(tiny_hf_with_tokenizer)
    prompts = ["The quick brown fox", "Once upon a time", "def hello():"]
    want = generate(model.params, model.config, prompts, model.tokenizer, max_new_tokens=24)
    stop = next(text[3:6] for text in want.texts if len(text) > 8)  # a string the greedy text reaches
    want = generate(model.params, model.config, prompts, model.tokenizer, max_new_tokens=24, stop_strings=[stop])
    placed = sharding.place(model.params, model.config, sharding.make_mesh(mesh))
    streamed = {}
    got = generate(placed, model.config, prompts, model.tokenizer, max_new_tokens=24, stop_strings=[stop],
                   on_text=lambda row, piece: streamed.__setitem__(row, streamed.get(row, "") + piece))
    assert got.texts == want.texts and got.tokens == want.tokens
    assert sorted(streamed) == [i for i, text in enumerate(want.texts) if text]  # the padding rows stream nothing
    assert all(streamed[i] == want.texts[i] for i in streamed)


def _cli(argv, devices=8, **kwargs):
    env = device_env(devices)
    return subprocess.Popen([sys.executable, "-m", "neojax.generate", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.mark.slow
def test_cli_output_is_the_same_on_any_mesh(tiny_hf_with_tokenizer):
    argv = ["--checkpoint", tiny_hf_with_tokenizer, "--prompt", "Once upon", "--prompt", "The quick",
            "--prompt", "def", "--max_new_tokens", "12"]
    outs = finish([_cli(argv + ["--mesh", mesh]) for mesh in ("data=1", "auto", "tensor=4")])
    assert all(err.count("error") == 0 for _, err in outs), outs
    assert outs[0][0].count("--- [") == 3 and outs[0][0] == outs[1][0] == outs[2][0]
    r = finish([_cli(argv + ["--mesh", "tensor=3"])])[0]
    assert r[1].startswith("error: --mesh tensor=3: tensor=3 does not divide the model's 4 attention heads")
    assert r[1].count("\n") == 1


def test_a_conversation_is_one_process(tiny_hf_with_tokenizer, monkeypatch):
    monkeypatch.setattr(generate_cli.jax, "process_count", lambda: 2)
    monkeypatch.setattr(sharding, "initialize_distributed", lambda **_: None)
    err = []
    monkeypatch.setattr(sys, "stderr", type("E", (), {"write": lambda self, s: err.append(s), "flush": lambda s: 0})())
    assert cli.run(generate_cli.main, ["--checkpoint", tiny_hf_with_tokenizer, "--chat"]) == 2
    assert "".join(err).startswith("error: --chat reads one keyboard: run it as one process")


@pytest.mark.slow
def test_two_processes_print_what_one_process_prints(tiny_hf_with_tokenizer):
    argv = ["--checkpoint", tiny_hf_with_tokenizer, "--prompt", "Once upon", "--prompt", "The quick",
            "--prompt", "def", "--max_new_tokens", "12", "--stop", "e"]
    (want, _), = finish([_cli(argv, devices=1)])
    outs = finish(processes("neojax.generate", argv, devices=2))
    ours = [line for line in outs[0][0].splitlines() if not line.startswith("[Gloo]")]  # gloo: "connected"
    assert ours == want.splitlines() and want.count("--- [") == 3, outs[0][1][-2000:]
    assert printed(outs[1][0]) == []
