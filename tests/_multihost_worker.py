"""One process of the two-process test (run by tests/test_sharding.py on 2 CPU devices, not collected by
pytest)."""
import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
coordinator, process_id = sys.argv[1], int(sys.argv[2])

from neojax import sharding  # noqa: E402

sharding.initialize_distributed(coordinator, 2, process_id)
from sharding_case import CASE_CONFIG, case_batch, case_optimizer, summarize  # noqa: E402

from neojax.train.step import make_train_step, sharded_init  # noqa: E402

mesh = sharding.make_mesh("data=2,fsdp=2,tensor=1")
assert jax.device_count() == 4 and jax.local_device_count() == 2
optimizer = case_optimizer()
state = sharded_init(CASE_CONFIG, optimizer, mesh, jax.random.key(0))
tokens = case_batch()
local = tokens[sharding.process_rows(tokens.shape[0])]  # this process reads only its rows
step = make_train_step(CASE_CONFIG, optimizer, mesh, abstract_state=jax.eval_shape(lambda: state))
state, metrics = step(state, sharding.global_batch(local, mesh))
summary = summarize(state, metrics)
if jax.process_index() == 0:
    print("RESULT " + json.dumps(summary), flush=True)
jax.distributed.shutdown()
