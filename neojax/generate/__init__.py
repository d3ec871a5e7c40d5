"""Text generation: a batch of prompts continued in one compiled loop (neojax.generate.loop), text
streamed as it arrives (neojax.generate.stream), drawn by the one sampler (neojax.infer.sampling), and the
command line (neojax.generate.__main__).

    from neojax.generate import generate
    out = generate(params, config, ["Once upon a time"], tokenizer, max_new_tokens=50,
                   temperature=0.8, top_p=0.9, seed=0)
    out.texts[0]

    python -m neojax.generate --checkpoint PATH --prompt "..." [--max_new_tokens N]
"""
from neojax.generate.loop import Generation, apply_repetition_penalty, fit, generate
from neojax.generate.stream import TextStream, cut
from neojax.infer.weights import decode_weights

__all__ = ["Generation", "TextStream", "apply_repetition_penalty", "cut", "decode_weights", "fit", "generate"]
