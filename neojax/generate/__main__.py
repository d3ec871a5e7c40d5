"""The command line of neojax.generate: prompts, a file of prompts, or a conversation.

    python -m neojax.generate --checkpoint PATH --prompt "..." [--max_new_tokens N]
        [--temperature T --top_k K --top_p P --seed S] [--num_samples N] [--stop STRING ...]
        [--prompt_file FILE] [--interactive | --chat [--system TEXT]] [--mesh auto|data=D,tensor=T]
        [--draft SMALLER_CHECKPOINT [--draft_tokens K]]

Every device is used (--mesh auto: heads split over the devices that divide them, rows over the
rest); greedy output is the same token for token on any mesh.
"""
from __future__ import annotations

import os
import sys

import jax

from neojax import checkpoint, cli, sharding
from neojax.finetune.chat import STOP, render_prompt
from neojax.generate.loop import fit, generate
from neojax.infer import speculative
from neojax.infer.weights import decode_weights


def _stream_to(out):
    def on_text(row, piece):
        if row == 0:
            out.write(piece)
            out.flush()
    return on_text


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m neojax.generate", description="Generate text with GPT-Neo.")
    parser.add_argument("--checkpoint", required=True, help="HF directory, neojax directory or training workdir")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    parser.add_argument("--prompt_file", help="a file with one prompt per line")
    parser.add_argument("--interactive", action="store_true", help="read prompts from stdin, keep the conversation")
    parser.add_argument("--chat", action="store_true",
                        help="interactive, in the User:/Assistant: template of chat fine-tuning (neojax.finetune.chat)")
    parser.add_argument("--system", default="", help="--chat: a system message that starts the conversation")
    parser.add_argument("--max_new_tokens", type=cli.positive_int, default=64)
    parser.add_argument("--temperature", type=cli.nonneg_float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_k", type=cli.nonneg_int, default=0, help="0 = off")
    parser.add_argument("--top_p", type=cli.probability, default=1.0, help="1 = off")
    parser.add_argument("--repetition_penalty", type=cli.positive_float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=cli.seed, default=0)
    parser.add_argument("--num_samples", type=cli.positive_int, default=1, help="samples per prompt")
    parser.add_argument("--stop", action="append", default=[], type=cli.unescape,
                        help=r'stop string (repeatable); \n, \t and \\ are escapes, e.g. --stop "\n\n"')
    parser.add_argument("--truncate", action="store_true", help="left-truncate prompts that do not fit")
    parser.add_argument("--draft", help="a smaller model with the same tokenizer that proposes tokens for this one "
                        "to check (speculative decoding: the same greedy text, samples distributed as without it)")
    parser.add_argument("--draft_tokens", type=cli.positive_int, default=4, help="tokens the draft proposes a round")
    cli.add_model_options(parser)
    sharding.add_mesh_options(parser, default="auto")
    return parser


def _prompts(args) -> list[str]:
    """The prompts of --prompt and --prompt_file, checked."""
    if any(not s for s in args.stop):
        raise cli.UsageError("--stop: an empty stop string would end every row at once; give text")
    prompts = list(args.prompt)
    if args.prompt_file:
        with open(cli.readable_file("--prompt_file", args.prompt_file), encoding="utf-8", errors="strict") as f:
            with cli.about(f"--prompt_file {args.prompt_file}"):
                lines = [line.rstrip("\n") for line in f if line.strip()]
        if lines and lines[0].startswith("\ufeff"):  # an editor's byte-order mark, not part of the prompt
            lines[0] = lines[0][1:]
            print(f"note: --prompt_file {args.prompt_file} starts with a UTF-8 byte-order mark; it is not part of "
                  "the first prompt", file=sys.stderr)
        if not lines:
            raise cli.UsageError(f"--prompt_file {args.prompt_file} holds no prompt (one prompt per non-empty line)")
        prompts += lines
    if not prompts and not (args.chat or args.interactive):
        raise cli.UsageError("no prompt: give --prompt TEXT, --prompt_file FILE, --interactive or --chat")
    _check_modes(args, prompts)
    return prompts


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prompts = _prompts(args)
    with cli.about(f"--checkpoint {args.checkpoint}"):
        path = os.path.expanduser(args.checkpoint)
        stated = checkpoint.stated_shape(path)
    draft = _check_draft(args)
    mesh = sharding.inference_mesh(args, [stated])
    if (args.chat or args.interactive) and jax.process_count() > 1:
        raise cli.UsageError(f"{'--chat' if args.chat else '--interactive'} reads one keyboard: run it as one process "
                             "(its --mesh may still span that host's devices)")
    if draft and jax.process_count() > 1:
        raise cli.UsageError("--draft decodes on one device of one process: run it as one process")
    with cli.about(f"--checkpoint {args.checkpoint}"):
        model = checkpoint.load(path, **cli.model_options(args))
    if draft:
        with cli.about(f"--draft {args.draft}"):
            draft = checkpoint.load(draft, **cli.model_options(args))
            speculative.check_draft(model.config, draft.config, args.draft_tokens)
    else:
        with cli.about(f"--mesh {args.mesh}"):
            model = model._replace(params=sharding.place(model.params, model.config, mesh))
    if model.tokenizer is None:
        raise cli.UsageError(f"--checkpoint {args.checkpoint} has no tokenizer; add tokenizer.json (or vocab.json + "
                             "merges.txt), e.g. python -m neojax.convert SRC DST --to neojax --tokenizer DIR")
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop_strings=args.stop,
                    truncate=args.truncate)
    if draft:
        settings.update(draft=(draft.params, draft.config), draft_tokens=args.draft_tokens)
    if args.max_new_tokens >= model.config.max_position_embeddings:
        raise cli.UsageError(f"--max_new_tokens {args.max_new_tokens} leaves no room for a prompt in the model's "
                             f"{model.config.max_position_embeddings}-token context; ask for fewer")
    if args.chat:
        return _chat(model, settings, args.seed, args.system)
    if args.interactive:
        return _interactive(model, settings, args.seed)
    with cli.about("--prompt"):  # encoded and fitted once, here, where a prompt too long is the user's
        encoded = fit([model.tokenizer.encode(p) or [model.tokenizer.eos_id] for p in prompts], args.max_new_tokens,
                      model.config, args.truncate)
    batch = [ids for ids in encoded for _ in range(args.num_samples)]
    streaming = len(batch) == 1 and sharding.is_lead_process()
    if streaming:
        sys.stdout.write(prompts[0])
    out = generate(model.params, model.config, batch, model.tokenizer, seed=args.seed,
                   on_text=_stream_to(sys.stdout) if streaming else None, **settings)
    if streaming:
        print()
    elif sharding.is_lead_process():
        for i, text in enumerate(out.texts):
            print(f"--- [{i // args.num_samples}.{i % args.num_samples}] ---\n{prompts[i // args.num_samples]}{text}")
    if out.acceptance is not None:
        print(f"the draft kept {out.acceptance:.0%} of its proposals", file=sys.stderr)
    return 0


def _check_draft(args):
    """The --draft path, checked (speculative decoding runs on one device), or None."""
    if args.draft_tokens != 4 and not args.draft:
        raise cli.UsageError("--draft_tokens is how many tokens --draft proposes a round; add --draft or drop it")
    if not args.draft:
        return None
    with cli.about(f"--draft_tokens {args.draft_tokens}"):
        speculative.check_draft_tokens(args.draft_tokens)
    if args.mesh != "auto":
        raise cli.UsageError(f"--draft decodes on one device; drop --mesh {args.mesh}")
    if args.repetition_penalty != 1.0:
        raise cli.UsageError("--repetition_penalty changes the model's distribution token by token; speculative "
                             "decoding (--draft) does not apply it: use one or the other")
    args.mesh = "data=1"
    return cli.existing_path("--draft", args.draft)


def _check_modes(args, prompts) -> None:
    """Options the chosen mode would ignore are refused, each by name."""
    mode = "--chat" if args.chat else "--interactive" if args.interactive else None
    if args.chat and args.interactive:
        raise cli.UsageError("give --chat (the chat template) or --interactive (plain continuation), not both")
    if args.system and not args.chat:
        raise cli.UsageError("--system is the system message of a --chat conversation; add --chat or drop --system")
    if mode is None:
        return
    ignored = [flag for flag, given in (("--prompt/--prompt_file", prompts), ("--num_samples", args.num_samples > 1),
                                        ("--truncate", args.truncate)) if given]
    if ignored:
        raise cli.UsageError(f"{mode} reads its turns from the keyboard and keeps the conversation's last tokens that "
                             f"fit; drop {', '.join(ignored)}")


def _interactive(model, settings, seed) -> int:
    """Chat-style loop: the conversation so far is the context, left-truncated when the window fills."""
    history: list[int] = []
    settings = {**settings, "truncate": True, "weights": decode_weights(model.params, model.config)}
    print("neojax interactive generation: empty line or Ctrl-D to quit.", file=sys.stderr)
    for turn, line in enumerate(_typed_lines("> ")):
        history += model.tokenizer.encode(line)
        out = generate(model.params, model.config, [history], model.tokenizer, seed=(seed + turn) % 2 ** 32,
                       on_text=_stream_to(sys.stdout), **settings)
        print()
        history = out.prompt_tokens[0] + out.tokens[0]
    return 0


def _typed_lines(prompt: str):
    """Lines typed at `prompt` until an empty line or end of input."""
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return
        if not line.strip():
            return
        yield line


def _chat(model, settings, seed, system: str = "") -> int:
    """Chat in the template the model was fine-tuned with: each answer ends at EOS or a new "User:"."""
    messages = [{"role": "system", "content": system}] if system else []
    settings = {**settings, "truncate": True, "stop_strings": list(settings["stop_strings"]) + [STOP],
                "weights": decode_weights(model.params, model.config)}
    print("neojax chat: empty line or Ctrl-D to quit.", file=sys.stderr)
    for turn, line in enumerate(_typed_lines("User: ")):
        messages.append({"role": "user", "content": line})
        sys.stdout.write("Assistant:")
        out = generate(model.params, model.config, render_prompt(messages), model.tokenizer,
                       seed=(seed + turn) % 2 ** 32,
                       on_text=_stream_to(sys.stdout), **settings)
        print()
        messages.append({"role": "assistant", "content": out.texts[0].strip()})
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
