"""Convert GPT-Neo checkpoints between formats (the source format is detected).

    python -m neojax.convert SRC DST --to neojax      # HF dir / mesh-tensorflow -> neojax
    python -m neojax.convert SRC DST --to hf          # neojax / mesh-tensorflow -> HF directory
    python -m neojax.convert SRC DST --quantize int8  # int8 weights + scales (a neojax directory, ~1/4 the bytes)
"""
from __future__ import annotations

import argparse
import sys

import jax

from neojax import checkpoint, cli
from neojax.data.tokenizer import Tokenizer
from neojax.model.quant import dequantize_params, is_quantized, param_bytes, quantize_params


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m neojax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="Hugging Face directory, neojax directory, or mesh-tensorflow checkpoint")
    parser.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--to", choices=["neojax", "hf"], help="default: neojax")
    parser.add_argument("--quantize", choices=["int8"], help="int8 weights, per-output-channel scales (neojax only)")
    parser.add_argument("--dequantize", action="store_true", help="float32 weights from an int8 source (e.g. for hf)")
    parser.add_argument("--mtf_config", help="original GPT-Neo run config JSON for a mesh-tensorflow source")
    parser.add_argument("--tokenizer", help="tokenizer file or directory to bundle (default: the source's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    args.to = args.to or "neojax"
    if args.quantize and args.to != "neojax":
        raise cli.UsageError(f"--quantize {args.quantize} writes a neojax directory; Hugging Face GPT-Neo "
                             "checkpoints hold float weights (drop --to hf)")
    if args.quantize and args.dequantize:
        raise cli.UsageError("give --quantize or --dequantize, not both")
    cli.apart("DST", args.dst, "SRC", args.src)
    cli.writable_folder("DST", args.dst, args.overwrite)
    if args.mtf_config:
        cli.readable_file("--mtf_config", args.mtf_config)
        with cli.about(f"SRC {args.src}"):
            fmt = checkpoint.detect_format(args.src)
        if fmt != "mesh_tf":
            raise cli.UsageError(f"--mtf_config describes a mesh-tensorflow checkpoint; SRC {args.src} is a {fmt} "
                                 "checkpoint that states its own config: drop --mtf_config")
    tokenizer = None
    if args.tokenizer:
        with cli.about(f"--tokenizer {args.tokenizer}"):
            tokenizer = Tokenizer.from_path(args.tokenizer)
    with cli.about(f"SRC {args.src}"):
        model = checkpoint.load(args.src, mtf_config=args.mtf_config)
    if tokenizer is not None:
        model = model._replace(tokenizer=tokenizer)
    if args.quantize:
        model = model._replace(params=jax.device_get(quantize_params(model.params)))
    elif args.dequantize:
        if not is_quantized(model.params):
            raise cli.UsageError(f"--dequantize: SRC {args.src} holds float weights already; drop --dequantize")
        model = model._replace(params=jax.device_get(dequantize_params(model.params)))
    with cli.about(f"DST {args.dst}"):
        checkpoint.save(args.dst, model, to=args.to, overwrite=args.overwrite)
    n = sum(x.size for x in jax.tree.leaves(model.params))
    size = param_bytes(model.params) / 1e6
    print(f"wrote {args.to} checkpoint to {args.dst} ({n / 1e6:.1f}M parameters, {size:.1f} MB"
          f"{', int8' if is_quantized(model.params) else ''}, {checkpoint.detect_format(args.src)} source"
          f"{', with tokenizer' if model.tokenizer else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
