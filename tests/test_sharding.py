"""Meshes, partition rules and sharded steps on 8 simulated CPU devices, and two processes."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from sharding_case import CASE_CONFIG, case_batch, case_optimizer, summarize
from support import device_env, free_port

from neojax import sharding
from neojax.model import preset
from neojax.train.step import init_state, make_train_step, sharded_init

HERE = os.path.dirname(__file__)


def test_mesh_from_config():
    assert jax.device_count() == 8
    mesh = sharding.make_mesh("data=2,fsdp=-1,tensor=2")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh({"fsdp": -1}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        sharding.make_mesh("data=3,fsdp=2")
    with pytest.raises(ValueError, match="unknown mesh axes.*valid axes"):
        sharding.make_mesh("dp=8")
    with pytest.raises(ValueError, match="not axis=size"):
        sharding.parse_mesh("data:8")


def test_on_device_moves_host_arrays_and_leaves_placed_ones():
    mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
    placed = sharding.put_global(np.ones((4, 2), np.float32), mesh, P("data"))
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = sharding.on_device({"host": host, "placed": placed})
    assert isinstance(out["host"], jax.Array) and np.array_equal(np.asarray(out["host"]), host)
    assert out["placed"] is placed


def test_unmatched_logical_axis_is_an_error_naming_the_parameter():
    rules = tuple(r for r in sharding.DEFAULT_RULES if r[0] != "mlp")
    with pytest.raises(ValueError, match="parameter h_0/mlp/c_fc/bias has logical axis 'mlp'"):
        sharding.param_specs(CASE_CONFIG, rules, sharding.make_mesh("tensor=8"))


@pytest.fixture(scope="module")
def single_device():
    """The single-device step."""
    optimizer = case_optimizer()
    state = init_state(CASE_CONFIG, optimizer, jax.random.key(0))
    state, metrics = make_train_step(CASE_CONFIG, optimizer)(state, case_batch())
    return summarize(state, metrics), state


@pytest.mark.slow
@pytest.mark.parametrize("mesh_spec", ["data=8", "data=2,fsdp=4", "data=2,fsdp=2,tensor=2", "tensor=8"])
def test_sharded_step_matches_single_device(single_device, mesh_spec):
    ref_summary, ref_state = single_device
    mesh = sharding.make_mesh(mesh_spec)
    optimizer = case_optimizer()
    state = sharded_init(CASE_CONFIG, optimizer, mesh, jax.random.key(0))
    step = make_train_step(CASE_CONFIG, optimizer, mesh, abstract_state=jax.eval_shape(lambda: state))
    state, metrics = step(state, jax.device_put(case_batch(), jax.sharding.NamedSharding(mesh, P(("data", "fsdp")))))
    assert abs(float(metrics["loss"]) - ref_summary["loss"]) < 1e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5),
                 state.params, ref_state.params)
    moved = np.abs(np.asarray(state.params["h_0"]["mlp"]["c_fc"]["kernel"]) -
                   np.asarray(sharded_init(CASE_CONFIG, optimizer, mesh,
                                           jax.random.key(0)).params["h_0"]["mlp"]["c_fc"]["kernel"]))
    assert moved.max() > 1e-4  # the step really changed the params the comparison covers
    # Placement follows the rules: check the arrays themselves.
    q = state.params["h_0"]["attn"]["q_proj"]["kernel"]
    fc = state.params["h_0"]["mlp"]["c_fc"]["kernel"]
    mu = state.opt_state[2][0].trace["h_0"]["mlp"]["c_fc"]["kernel"]  # momentum of c_fc
    sizes = dict(mesh.shape)
    if sizes["tensor"] > 1:  # heads and MLP columns really are split
        assert q.sharding.spec[1] == "tensor" and fc.sharding.spec[1] == "tensor"
        assert q.addressable_shards[0].data.shape[1] == 64 // sizes["tensor"]
    if sizes["fsdp"] > 1:
        assert fc.sharding.spec[0] == "fsdp"
    if sizes["data"] == 8:
        assert fc.sharding.spec == P(None, None)  # pure data parallel replicates params
    assert mu.sharding.spec == fc.sharding.spec  # optimizer moments follow their parameter


def test_state_is_born_sharded():
    """Every array of the initial state is created in shards: no device holds a whole sharded leaf."""
    mesh = sharding.make_mesh("fsdp=4,tensor=2")
    state = sharded_init(CASE_CONFIG, case_optimizer(), mesh, jax.random.key(1))
    wte = state.params["wte"]
    assert wte.sharding.spec == P("tensor", "fsdp")
    assert {s.data.shape for s in wte.addressable_shards} == {(256, 16)}


def test_activations_carry_sharding_constraints():
    mesh = sharding.make_mesh("data=2,fsdp=4")
    optimizer = case_optimizer()
    abstract = jax.eval_shape(lambda: init_state(CASE_CONFIG, optimizer, jax.random.key(0)))
    step = make_train_step(CASE_CONFIG, optimizer, mesh, abstract_state=abstract)
    with jax.set_mesh(mesh):
        text = step.jitted.trace(abstract, jax.ShapeDtypeStruct((8, 17), jnp.int32)).jaxpr.pretty_print()
    assert text.count("sharding_constraint") >= CASE_CONFIG.num_layers + 1  # embeddings + every block


@pytest.mark.slow
def test_plan_for_large_presets_allocates_nothing():
    p = sharding.plan(preset("gpt-neo-2.7B"), "data=4,fsdp=8,tensor=1")
    n = p["num_params"]
    assert abs(n / 1e9 - 2.65) < 0.02
    assert abs(p["total_per_device"] - 3 * 4 * n / 8) / p["total_per_device"] < 0.01  # Adam: 3 float32 copies / 8
    p13 = sharding.plan(preset("gpt-neo-1.3B"), "data=1,fsdp=8,tensor=4")
    wte = next(r for r in p13["rows"] if r[0] == "wte")
    assert wte[2] == P(None, "fsdp")  # 50257 is not divisible by 4: the vocab dim is replicated
    r = subprocess.run([sys.executable, "-m", "neojax.sharding", "--preset", "gpt-neo-2.7B", "--mesh",
                        "data=4,fsdp=8,tensor=1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(32 devices)" in r.stdout and "per device: params 1.24 GB + optimizer state 2.47 GB" in r.stdout


@pytest.mark.slow
def test_two_processes_agree_with_one(single_device):
    ref_summary, _ = single_device
    port = free_port()
    env = device_env(2, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "_multihost_worker.py"), f"127.0.0.1:{port}",
                               str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    result = json.loads(next(line for line in outs[0][0].splitlines() if line.startswith("RESULT "))[7:])
    assert abs(result["loss"] - ref_summary["loss"]) < 1e-5
    for name, value in ref_summary["param_sums"].items():
        assert abs(result["param_sums"][name] - value) < 1e-3 * max(1.0, abs(value)), name


def test_plan_and_benchmark_take_a_checkpoint_or_workdir(tiny_hf_with_tokenizer, capsys):
    """`--preset` (sharding) and `--presets` (benchmark) take a checkpoint's shape as well as a preset's."""
    from neojax import checkpoint
    from neojax import sharding as sharding_cli
    from neojax.model.config import model_shape
    want = checkpoint.load(tiny_hf_with_tokenizer).config
    assert model_shape(tiny_hf_with_tokenizer) == want
    assert sharding_cli.main(["--preset", tiny_hf_with_tokenizer, "--mesh", "data=1,fsdp=2,tensor=1",
                              "--devices", "2"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("wte "))
    assert f"({want.vocab_size}, {want.hidden_size})" in row  # the checkpoint's shape, not a preset's
    assert f"(x{want.num_layers})" in out


def test_inference_meshes_auto_and_checks():
    from neojax.model.config import preset
    from neojax.sharding import auto_mesh, check_inference_mesh, data_parallel
    neo = preset("gpt-neo-125M")  # 12 heads
    assert auto_mesh(neo, 8) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert auto_mesh(neo, 16) == {"data": 4, "fsdp": 1, "tensor": 4}
    assert auto_mesh(neo, 8, replicas=False) == {"data": 1, "fsdp": 1, "tensor": 6}  # a server's one engine
    assert auto_mesh(neo, 1) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert auto_mesh([neo, neo.replace(num_heads=2)], 8, replicas=False)["tensor"] == 2  # a draft's heads too
    assert data_parallel({"data": 2, "fsdp": 4, "tensor": 2}) == 8
    check_inference_mesh({"data": 2, "fsdp": 4, "tensor": 3}, neo, rows=16)
    with pytest.raises(ValueError, match="does not divide the model's 12 attention heads"):
        check_inference_mesh({"data": 1, "fsdp": 1, "tensor": 8}, neo)
    with pytest.raises(ValueError, match=r"data x fsdp = 8 does not divide the batch \(12\)"):
        check_inference_mesh({"data": 2, "fsdp": 4, "tensor": 1}, neo, rows=12)
