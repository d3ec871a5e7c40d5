"""An OpenAI-compatible server over a continuous-batching engine: `python -m neojax.serve`."""
