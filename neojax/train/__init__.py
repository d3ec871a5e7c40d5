"""Training: state, step (loss, accumulation, guards), optimizers, the loop."""
