"""Convert GPT-Neo checkpoints between formats (the source format is detected).

    python -m neojax.convert SRC DST --to neojax      # HF dir / mesh-tensorflow -> neojax
    python -m neojax.convert SRC DST --to hf          # neojax / mesh-tensorflow -> HF directory
"""
from __future__ import annotations

import argparse
import sys

import jax

from neojax import checkpoint
from neojax.data.tokenizer import Tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neojax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="Hugging Face directory, neojax directory, or mesh-tensorflow checkpoint")
    parser.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--to", required=True, choices=["neojax", "hf"])
    parser.add_argument("--mtf_config", help="original GPT-Neo run config JSON for a mesh-tensorflow source")
    parser.add_argument("--tokenizer", help="tokenizer file or directory to bundle (default: the source's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        model = checkpoint.load(args.src, mtf_config=args.mtf_config)
        if args.tokenizer:
            model = model._replace(tokenizer=Tokenizer.from_path(args.tokenizer))
        checkpoint.save(args.dst, model, to=args.to, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(x.size for x in jax.tree.leaves(model.params))
    print(f"wrote {args.to} checkpoint to {args.dst} ({n / 1e6:.1f}M parameters, "
          f"{checkpoint.detect_format(args.src)} source{', with tokenizer' if model.tokenizer else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
