"""neojax: GPT-Neo in JAX/Flax for research: exact models, sharded training, harness-exact evaluation."""
__version__ = "0.1.0"
