"""Bad inputs, as a hostile new user would type them, across train, evaluate, generate, convert and
sharding: each must end with exit code 2 and one line on stderr that names the input, with no
traceback and nothing written. The commands run in-process through `cli.run`, as `python -m` does
(a few run as real subprocesses at the end)."""
import json
import os
import subprocess
import sys

import pytest
from support import exit_of

from neojax import benchmark as benchmark_cli
from neojax import cli
from neojax import convert as convert_cli
from neojax import sharding as sharding_cli
from neojax.evaluate import __main__ as evaluate_cli
from neojax.generate import __main__ as generate_cli
from neojax.serve import __main__ as serve_cli
from neojax.train import __main__ as train_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAINS = {"train": train_cli.main, "evaluate": evaluate_cli.main, "generate": generate_cli.main,
         "convert": convert_cli.main, "sharding": sharding_cli.main, "benchmark": benchmark_cli.main,
         "serve": serve_cli.main}
TRAIN = ["--config", "quickstart:smoke", "--workdir", "{tmp}/run"]

# (command, arguments, text the one-line message must contain). {hf}: a tiny HF model with a
# tokenizer; {tmp}: this case's folder; {data}: a folder of valid task files; {file}: a text file.
CASES = [
    # --- train: --config overrides, names, ranges ------------------------------------------------------
    ("train", TRAIN + ["--config.train.totl_steps=3"], "did you mean train.total_steps"),
    ("train", TRAIN + ["--config.trian.total_steps=3"], "'trian'"),
    ("train", TRAIN + ["--config.train.total_steps=0"], "train.total_steps=0"),
    ("train", TRAIN + ["--config.train.total_steps=-5"], "train.total_steps=-5"),
    ("train", TRAIN + ["--config.train.total_steps=abc"], "train.total_steps=abc"),
    ("train", TRAIN + ["--config.train.total_steps=1.5"], "train.total_steps=1.5"),
    ("train", TRAIN + ["--config.train.global_batch=0"], "train.global_batch=0"),
    ("train", TRAIN + ["--config.train.microbatches=0"], "train.microbatches=0"),
    ("train", TRAIN + ["--config.train.microbatches=3"], "train.microbatches=3"),
    ("train", TRAIN + ["--config.train.log_every=0"], "train.log_every=0"),
    ("train", TRAIN + ["--config.train.max_nonfinite_streak=0"], "train.max_nonfinite_streak=0"),
    ("train", TRAIN + ["--config.train.z_loss=-1"], "train.z_loss=-1"),
    ("train", TRAIN + ["--config.train.seed=-1"], "train.seed=-1"),
    ("train", TRAIN + ["--config.train.report_mfu=maybe"], "train.report_mfu=maybe"),
    ("train", TRAIN + ["--config.optimizer.lr=0"], "optimizer.lr=0"),
    ("train", TRAIN + ["--config.optimizer.lr=-1e-3"], "optimizer.lr=-0.001"),
    ("train", TRAIN + ["--config.optimizer.lr=nan"], "optimizer.lr=NaN"),
    ("train", TRAIN + ["--config.optimizer.lr=inf"], "optimizer.lr=Infinity"),
    ("train", TRAIN + ["--config.optimizer.eps=0"], "optimizer.eps=0"),
    ("train", TRAIN + ["--config.optimizer.b1=1.5"], "optimizer.b1=1.5"),
    ("train", TRAIN + ["--config.optimizer.b2=-0.1"], "optimizer.b2=-0.1"),
    ("train", TRAIN + ["--config.optimizer.weight_decay=-1"], "optimizer.weight_decay=-1"),
    ("train", TRAIN + ["--config.optimizer.clip=-1"], "optimizer.clip=-1"),
    ("train", TRAIN + ["--config.optimizer.warmup_steps=-1"], "optimizer.warmup_steps=-1"),
    ("train", TRAIN + ["--config.optimizer.decay_steps=-3"], "optimizer.decay_steps=-3"),
    ("train", TRAIN + ["--config.optimizer.final_lr_ratio=2"], "optimizer.final_lr_ratio=2"),
    ("train", TRAIN + ["--config.optimizer.schedule=cosin"], "did you mean 'cosine'?"),
    ("train", TRAIN + ["--config.checkpoint.keep=0"], "checkpoint.keep=0"),
    ("train", TRAIN + ["--config.checkpoint.keep=-1"], "checkpoint.keep=-1"),
    ("train", TRAIN + ["--config.checkpoint.every_steps=0"], "checkpoint.every_steps=0"),
    ("train", TRAIN + ["--config.checkpoint.keep_period=-1"], "checkpoint.keep_period=-1"),
    ("train", TRAIN + ["--config.checkpoint.async_save=sometimes"], "checkpoint.async_save=sometimes"),
    ("train", TRAIN + ["--config.eval.every_steps=-1"], "eval.every_steps=-1"),
    ("train", TRAIN + ["--config.eval.valid_batches=0"], "eval.valid_batches=0"),
    ("train", TRAIN + ['--config.eval.hooks=["valid_loss","nope"]'], "'nope': unknown eval"),
    ("train", TRAIN + ["--config.eval.hooks=valid_loss,nope"], "'nope': unknown eval"),
    ("train", TRAIN + ['--config.eval.hooks=["valid_loss","tasks"]'], "eval.tasks=[]"),
    ("train", TRAIN + ['--config.eval.hooks={"a": 1}'], "eval.hooks"),
    ("train", TRAIN + ['--config.eval.hooks=["samples"]', "--config.eval.sample_prompts=[]"],
     "the 'samples' hook needs prompts"),
    ("train", TRAIN + ['--config.eval.hooks=["valid_loss","classification"]'], "'classification' scores a classify"),
    ("train", TRAIN + ['--config.eval.hooks=["tasks"]', '--config.eval.tasks=["lambada"]'], "'lambada': unknown task"),
    ("train", TRAIN + ['--config.eval.hooks=["tasks"]', '--config.eval.tasks=["piqa"]',
                       "--config.eval.task_data_dir={tmp}/none"], "eval.task_data_dir"),
    ("train", TRAIN + ["--config.eval.sample_max_new_tokens=0"], "eval.sample_max_new_tokens=0"),
    ("train", TRAIN + ["--config.eval.sample_temperature=-1"], "eval.sample_temperature=-1"),
    ("train", TRAIN + ["--config.eval.sample_top_p=0"], "eval.sample_top_p=0"),
    ("train", TRAIN + ["--config.eval.num_fewshot=-1"], "eval.num_fewshot=-1"),
    ("train", TRAIN + ["--config.eval.task_limit=-2"], "eval.task_limit=-2"),
    ("train", TRAIN + ["--config.data.source=nope"], 'data.source="nope": unknown data_source'),
    ("train", TRAIN + ["--config.data.source=mixture"], "data.mixture=[]"),
    ("train", TRAIN + ["--config.data.source=text_files"], "data.source_args.paths"),
    ("train", TRAIN + ["--config.data.source_args.pathz=x"], "data.source_args.pathz"),
    ("train", TRAIN + ["--config.data.source=text_files", "--config.data.source_args.paths={tmp}/none/*.txt"],
     "matches no files"),
    ("train", TRAIN + ["--config.data.seq_len=0"], "data.seq_len=0"),
    ("train", TRAIN + ["--config.data.seq_len=100000"], "data.seq_len=100000"),
    ("train", TRAIN + ["--config.data.valid_fraction=1.5"], "data.valid_fraction=1.5"),
    ("train", TRAIN + ["--config.data.valid_fraction=-0.1"], "data.valid_fraction=-0.1"),
    ("train", TRAIN + ["--config.data.on_error=ignore"], 'data.on_error="ignore"'),
    ("train", TRAIN + ["--config.data.train_sentencepiece=-1"], "data.train_sentencepiece=-1"),
    ("train", TRAIN + ["--config.data.train_sentencepiece=100"], "data.train_sentencepiece=100"),
    ("train", TRAIN + ["--config.data.tokenizer={tmp}/none"], "data.tokenizer"),
    ("train", TRAIN + ["--config.data.seed=-1"], "data.seed=-1"),
    ("train", TRAIN + ["--config.model.preset=gpt-neo-9B"], 'model.preset="gpt-neo-9B": unknown preset'),
    ("train", TRAIN + ["--config.model.dtype=float16"], 'model.dtype="float16"'),
    ("train", TRAIN + ["--config.model.remat=some"], 'model.remat="some"'),
    ("train", TRAIN + ["--config.model.overrides.num_heads=3"], "num_heads=3"),
    ("train", TRAIN + ['--config.model.overrides.attention_types=[[["globl", "local"], 2]]'], 'unknown attention'),
    ("train", TRAIN + ['--config.model.overrides.attention_types=[[["global"], 3]]'], "attention_types"),
    ("train", TRAIN + ["--config.model.overrides.nonfield=1"], "nonfield"),
    ("train", TRAIN + ["--config.model.overrides.hidden_size=-8"], "hidden_size=-8"),
    ("train", TRAIN + ["--config.model.overrides.window_size=two"], "window_size='two'"),
    ("train", TRAIN + ["--config.model.init_from={tmp}/none"], "model.init_from"),
    ("train", TRAIN + ["--config.lora.rank=-1"], "lora.rank=-1"),
    ("train", TRAIN + ["--config.lora.alpha=0"], "lora.alpha=0"),
    ("train", TRAIN + ['--config.lora.targets=["("]'], 'lora.targets=["("]: \'(\' is not a regular expression'),
    ("train", TRAIN + ["--config.objective=distill", "--config.distill.teacher={tmp}/none"], "distill.teacher"),
    ("train", TRAIN + ["--config.objective=distill"], "needs a teacher"),
    ("train", TRAIN + ["--config.distill.teacher={tmp}"], "only the distill objective reads it; add objective=distill"),
    ("train", TRAIN + ["--config.distill.temperature=0"], "distill.temperature=0"),
    ("train", TRAIN + ["--config.distill.alpha=2"], "distill.alpha=2"),
    ("train", TRAIN + ["--config.objective=regress"], '--config.objective="regress": unknown objective'),
    ("train", TRAIN + ["--config.mesh=data=2,data=4"], "axis 'data' is given twice"),
    ("train", TRAIN + ["--config.mesh=gpu=2"], "unknown mesh axes ['gpu']"),
    ("train", TRAIN + ["--config.mesh=data=0"], '--config.mesh="data=0": mesh'),
    ("train", TRAIN + ["--config.mesh=data=x"], "'data=x' is not axis=size"),
    ("train", TRAIN + ["--config.mesh=data=3"], "needs 3 devices"),
    ("train", TRAIN + ["--config.train.total_steps"], "--config.train.total_steps"),
    # --- train: the command line itself ----------------------------------------------------------------
    ("train", ["--config", "quickstrat", "--workdir", "{tmp}/run"], "unknown experiment 'quickstrat'"),
    ("train", ["--config", "quickstart:nope", "--workdir", "{tmp}/run"], "unknown quickstart variant 'nope'"),
    ("train", ["--config", "{tmp}/none.py", "--workdir", "{tmp}/run"], "none.py"),
    ("train", ["--config", "{tmp}", "--workdir", "{tmp}/run"], "is not a file"),
    ("train", ["--config", "{syntax_error}", "--workdir", "{tmp}/run"], "broken.py: line 1"),
    ("train", ["--config", "{no_get_config}", "--workdir", "{tmp}/run"], "defines no get_config"),
    ("train", ["--config", "quickstart:smoke"], "--workdir"),
    ("train", ["--config", "quickstart:smoke", "--workdir", ""], "--workdir is empty"),
    ("train", TRAIN + ["--num_processes", "0"], "--num_processes"),
    ("train", TRAIN + ["--process_id", "-1"], "--process_id"),
    ("train", TRAIN + ["--bogus"], "--bogus"),
    ("train", ["--config", "quickstart:smoke", "--workdir", "{file}", "--config.train.global_batch=8"], "is a file"),
    ("train", ["--config", "quickstart:smoke", "--workdir", "{file}/run", "--config.train.global_batch=8"],
     "cannot be created"),
    # --- evaluate ---------------------------------------------------------------------------------------
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}"], "nothing to evaluate"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--output", "/dev/full"],
     "--output /dev/full is a character device, not a regular file"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", ","], "nothing to evaluate"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "lambada_openia"], "'lambada_openia'"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{tmp}", "--tasks", "piqa"], "piqa.jsonl"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--limit", "-1"], "--limit"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--limit", "x"], "--limit"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--batch_size", "0"],
     "--batch_size"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--num_fewshot", "-1"],
     "--num_fewshot"),
    ("evaluate", ["--checkpoint", "{hf}", "--text_files", "{file}", "--stride", "-5"], "--stride"),
    ("evaluate", ["--checkpoint", "{hf}", "--text_files", "{file}", "--stride", "100000"], "--stride 100000"),
    ("evaluate", ["--checkpoint", "{hf}", "--text_files", "{file}", "--stride", "64", "--max_len", "32"],
     "--stride 64 exceeds --max_len 32"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--max_len", "100000"],
     "--max_len 100000"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--max_len", "-1"], "--max_len"),
    ("evaluate", ["--checkpoint", "{tmp}/none", "--data_dir", "{data}", "--tasks", "piqa"], "--checkpoint"),
    ("evaluate", ["--checkpoint", "{tmp}", "--data_dir", "{data}", "--tasks", "piqa"],
     "cannot tell the checkpoint format"),
    ("evaluate", ["--checkpoint", "{file}", "--data_dir", "{data}", "--tasks", "piqa"],
     "cannot tell the checkpoint format"),
    ("evaluate", ["--checkpoint", "{hf_bad_config}", "--data_dir", "{data}", "--tasks", "piqa"], "num_layers='two'"),
    ("evaluate", ["--checkpoint", "{hf_no_tokenizer}", "--data_dir", "{data}", "--tasks", "piqa"], "no tokenizer"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--output", "{tmp}/no/r.json"],
     "--output"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--output", "{tmp}"], "--output"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{tmp}/none", "--tasks", "piqa"], "--data_dir"),
    ("evaluate", ["--checkpoint", "{hf}", "--text_files", "{tmp}/none/*.txt"], "--text_files"),
    ("evaluate", ["--checkpoint", "{hf}", "--text_files", "{file}", "--jsonl", "{file}"], "--jsonl"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--stride", "5"], "--stride"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--dtype", "float16"],
     "--dtype"),
    ("evaluate", ["--checkpoint", "{hf}", "--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa"],
     "--checkpoint given 2 times"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--num_fewshot", "1"],
     "piqa.train.jsonl"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "lambada_openai", "--num_fewshot", "5"],
     "--num_fewshot 5"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "wikitext", "--num_fewshot", "1"],
     "wikitext is zero-shot (a perplexity task"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa,toxigen", "--num_fewshot", "1"],
     "toxigen is zero-shot"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--max_gen_toks", "5"],
     "--max_gen_toks applies to generation tasks"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--max_gen_toks", "0"],
     "--max_gen_toks"),
    ("evaluate", ["--prepare", "piqa", "--checkpoint", "{hf}", "--data_dir", "{tmp}"], "drop --checkpoint"),
    ("evaluate", ["--prepare", "piqa,nosuchtask", "--data_dir", "{tmp}"], "unknown task 'nosuchtask'"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{tmp}", "--tasks", "hellaswag", "--tfds_data_dir",
                  "{tmp}"], "capitalises ctx_b"),
    ("evaluate", ["--checkpoint", "{hf}", "--jsonl", "{empty_jsonl}"], "no text to score"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--taks", "piqa"], "--taks"),
    ("evaluate", ["--data_dir", "{data}", "--tasks", "piqa"], "--checkpoint"),
    # --- generate ---------------------------------------------------------------------------------------
    ("generate", ["--checkpoint", "{hf}"], "no prompt"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--seed", "4294967296"], "--seed"),
    # --- serve: refused before the port is taken or a weight is read -----------------------------------
    ("serve", ["--checkpoint", "{hf}", "--api_key", ""], "--api_key (or NEOJAX_API_KEY) is empty"),
    ("serve", ["--checkpoint", "{hf}", "--max_len", "1"], "--max_len 1 leaves no room"),
    # --- multi-host flags: checked before jax.distributed starts --------------------------------------
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--coordinator", "localhost",
                  "--num_processes", "2", "--process_id", "0"], "--coordinator localhost: give host:port"),
    ("evaluate", ["--checkpoint", "{hf}", "--data_dir", "{data}", "--tasks", "piqa", "--coordinator", "localhost:1",
                  "--num_processes", "2", "--process_id", "2"], "--process_id 2 is outside 0..1"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--temperature", "nan"], "--temperature"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--temperature", "-1"], "--temperature"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--temperature", "inf"], "--temperature"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--top_p", "0"], "--top_p"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--top_p", "1.5"], "--top_p"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--top_p", "nan"], "--top_p"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--top_k", "-1"], "--top_k"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--top_k", "1.5"], "--top_k"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--max_new_tokens", "0"], "--max_new_tokens"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--max_new_tokens", "-3"], "--max_new_tokens"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--max_new_tokens", "100000"], "--max_new_tokens 100000"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--repetition_penalty", "0"], "--repetition_penalty"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--repetition_penalty", "nan"], "--repetition_penalty"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--seed", "-1"], "--seed"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--num_samples", "0"], "--num_samples"),
    ("generate", ["--checkpoint", "{hf}", "--prompt_file", "{tmp}"], "--prompt_file"),
    ("generate", ["--checkpoint", "{hf}", "--prompt_file", "{tmp}/none.txt"], "--prompt_file"),
    ("generate", ["--checkpoint", "{hf}", "--prompt_file", "{empty_file}"], "--prompt_file"),
    ("generate", ["--checkpoint", "{hf}", "--prompt_file", "{binary_file}"], "--prompt_file"),
    ("generate", ["--checkpoint", "{tmp}/none", "--prompt", "a"], "--checkpoint"),
    ("generate", ["--checkpoint", "{tmp}", "--prompt", "a"], "cannot tell the checkpoint format"),
    ("generate", ["--checkpoint", "{hf_no_tokenizer}", "--prompt", "a"], "no tokenizer"),
    ("generate", ["--checkpoint", "{hf_gpt2}", "--prompt", "a"], "model_type 'gpt2'"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--dtype", "float16"], "--dtype"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--stop", ""], "--stop"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "x " * 200], "prompt 0 has"),
    ("generate", ["--prompt", "a"], "--checkpoint"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--system", "Be brief."], "--system is the system message"),
    ("generate", ["--checkpoint", "{hf}", "--chat", "--prompt", "a"], "drop --prompt/--prompt_file"),
    ("generate", ["--checkpoint", "{hf}", "--interactive", "--num_samples", "3"], "drop --num_samples"),
    ("generate", ["--checkpoint", "{hf}", "--chat", "--interactive"], "not both"),
    ("generate", ["--checkpoint", "{hf}", "--prompt", "a", "--bogus"], "--bogus"),
    # --- convert ----------------------------------------------------------------------------------------
    ("convert", ["{tmp}/none", "{tmp}/out", "--to", "hf"], "SRC"),
    ("convert", ["{tmp}", "{tmp}/out", "--to", "hf"], "cannot tell the checkpoint format"),
    ("convert", ["{hf}", "{tmp}/out", "--to", "onnx"], "--to"),
    ("convert", ["{hf}", "{data}", "--to", "hf"], "already exists"),
    ("convert", ["{hf}", "{hf}", "--to", "hf", "--overwrite"], "DST"),
    ("convert", ["{hf}", "{hf}/..", "--to", "hf", "--overwrite"], "holds SRC"),  # replacing it would delete SRC
    ("convert", ["{hf}", "{tmp}/out", "--to", "hf", "--tokenizer", "{tmp}/none"], "--tokenizer"),
    ("convert", ["{hf}", "{tmp}/out", "--to", "hf", "--tokenizer", "{data}"], "--tokenizer"),
    ("convert", ["{hf}", "{tmp}/out", "--to", "hf", "--tokenizer", "{bad_tokenizer_json}"], "--tokenizer"),
    ("convert", ["{hf}", "{tmp}/out", "--to", "hf", "--mtf_config", "{tmp}/none.json"], "--mtf_config"),
    ("convert", ["{hf_bad_config}", "{tmp}/out", "--to", "hf"], "num_layers='two'"),
    ("convert", ["{hf_list_config}", "{tmp}/out", "--to", "hf"], "not a JSON object"),
    ("convert", ["{hf_odd_heads}", "{tmp}/out", "--to", "hf"], "not divisible by num_heads"),
    ("convert", ["{hf_gpt2}", "{tmp}/out", "--to", "hf"], "model_type 'gpt2'"),
    ("convert", ["{hf_bad_weights}", "{tmp}/out", "--to", "hf"], "cannot read weights file"),
    ("convert", ["{hf_no_weights}", "{tmp}/out", "--to", "hf"], "has no weights"),
    ("convert", ["{hf}", "--to", "hf"], "dst"),
    ("convert", ["{hf}", "{file}/out", "--to", "hf"], "DST"),
    # --- sharding ---------------------------------------------------------------------------------------
    ("sharding", ["--devices", "0"], "--devices"),
    ("sharding", ["--devices", "-4"], "--devices"),
    ("sharding", ["--devices", "x"], "--devices"),
    ("sharding", ["--mesh", "data=2,data=4"], "axis 'data' is given twice"),
    ("sharding", ["--mesh", "gpu=2"], "--mesh gpu=2"),
    ("sharding", ["--mesh", "data=0"], "--mesh data=0"),
    ("sharding", ["--mesh", "data=x"], "--mesh data=x"),
    ("sharding", ["--mesh", "data=-1,fsdp=-1"], "--mesh data=-1,fsdp=-1"),
    ("sharding", ["--mesh", "data=4", "--devices", "8"], "--devices 8"),
    ("sharding", ["--mesh", "data=3,fsdp=-1", "--devices", "8"], "not divisible by 3"),
    ("sharding", ["--mesh", "data=2,fsdp=2", "--devices", "3"], "--devices 3"),
    ("sharding", ["--optimizer_moments", "-1"], "--optimizer_moments"),
    ("sharding", ["--preset", "gpt-neo-9B"], "--preset gpt-neo-9B: 'gpt-neo-9B' is neither a preset"),
    ("sharding", ["--preset", "{tmp}"], "nor a checkpoint directory"),
    ("sharding", ["--lora_rank", "-1"], "--lora_rank"),
    ("sharding", ["--lora_rank", "4", "--lora_targets", "("], "--lora_targets"),
    ("sharding", ["--lora_rank", "4", "--lora_targets", "zzz"], "--lora_targets zzz"),
    ("sharding", ["--bogus"], "--bogus"),
    # --- benchmark --------------------------------------------------------------------------------------
    ("benchmark", ["--only", "decoding"], "--only decoding"),
    ("benchmark", ["--presets", "gpt-neo-9B"], "--presets gpt-neo-9B"),
    ("benchmark", ["--seq_len", "0"], "--seq_len"),
    ("benchmark", ["--presets", "tiny", "--seq_len", "4096"], "--seq_len 4096"),
    ("benchmark", ["--train_batch", "-1"], "--train_batch"),
    ("benchmark", ["--output", "{tmp}/none/b.json"], "--output"),
    ("benchmark", ["--presets", "tiny", "--seq_len", "64", "--kv_context", "100"], "--kv_context 100"),
    ("benchmark", ["--presets", "tiny", "--seq_len", "64", "--kv_context", "4096"], "--kv_context 4096"),
]

# Task records with one problem each: (task, record, text the message must contain).
VALID = {
    "lambada_openai": {"text": "the quick brown fox jumps"},
    "wikitext": {"page": " = Title = \n some text . \n"},
    "piqa": {"goal": "open a jar", "sol1": "twist the lid", "sol2": "hit it", "label": 0},
    "hellaswag": {"activity_label": "Cooking", "ctx_a": "A man cuts.", "ctx_b": "he", "endings": ["a", "b", "c", "d"],
                  "label": 1},
    "winogrande": {"sentence": "The cup fell because _ was heavy.", "option1": "the cup", "option2": "the table",
                   "answer": "1"},
    "mathqa": {"Problem": "2 + 2?", "options": "a ) 1 , b ) 2 , c ) 3 , d ) 4 , e ) 5", "correct": "d"},
    "pubmedqa": {"question": "Does it work?", "context": {"contexts": ["We tried."]}, "final_decision": "yes"},
}
BAD_RECORDS = [
    ("lambada_openai", {}, "field 'text' is missing"),
    ("lambada_openai", {"text": 5}, "field 'text' must be a string"),
    ("lambada_openai", {"text": "oneword"}, "has no space"),
    ("lambada_openai", "just a string", "not a JSON object"),
    ("lambada_openai", [1, 2], "not a JSON object"),
    ("wikitext", {"text": "x"}, "field 'page' is missing"),
    ("piqa", {**VALID["piqa"], "label": 7}, "field 'label' must be 0 or 1, not 7"),
    ("piqa", {**VALID["piqa"], "label": "x"}, "field 'label' must be 0 or 1"),
    ("piqa", {**VALID["piqa"], "label": True}, "field 'label' must be 0 or 1"),
    ("piqa", {**VALID["piqa"], "label": 0.5}, "field 'label' must be 0 or 1"),
    ("piqa", {k: v for k, v in VALID["piqa"].items() if k != "sol1"}, "field 'sol1' is missing"),
    ("piqa", {**VALID["piqa"], "goal": 3}, "field 'goal' must be a string"),
    ("piqa", {**VALID["piqa"], "sol2": " "}, "answer choice 1 is empty"),
    ("piqa", {**VALID["piqa"], "goal": "\ud800"}, "a lone surrogate"),
    ("hellaswag", {**VALID["hellaswag"], "endings": "abcd"}, "field 'endings' must be a list"),
    ("hellaswag", {**VALID["hellaswag"], "endings": ["only"]}, "field 'endings' must be a list"),
    ("hellaswag", {**VALID["hellaswag"], "endings": ["a", 2, "c", "d"]}, "field 'endings' must be a list"),
    ("hellaswag", {**VALID["hellaswag"], "label": 4}, "field 'label' must be an integer in [0, 4)"),
    ("hellaswag", {**VALID["hellaswag"], "label": -1}, "field 'label' must be an integer in [0, 4)"),
    ("hellaswag", {k: v for k, v in VALID["hellaswag"].items() if k != "ctx_b"}, "field 'ctx_b' is missing"),
    ("winogrande", {**VALID["winogrande"], "answer": "3"}, "field 'answer'"),
    ("winogrande", {**VALID["winogrande"], "sentence": "No blank here."}, "has no '_'"),
    ("winogrande", {**VALID["winogrande"], "option1": ["a"]}, "field 'option1' must be a string"),
    ("mathqa", {**VALID["mathqa"], "correct": "f"}, "field 'correct' must be one of a-e"),
    ("mathqa", {**VALID["mathqa"], "options": "1, 2, 3"}, "field 'options'"),
    ("pubmedqa", {**VALID["pubmedqa"], "final_decision": "perhaps"}, "field 'final_decision'"),
    ("pubmedqa", {**VALID["pubmedqa"], "context": {}}, "field 'context.contexts'"),
    ("pubmedqa", {**VALID["pubmedqa"], "context": {"contexts": "text"}}, "field 'context.contexts'"),
]
BAD_FILES = [  # (task, file content, text the message must contain)
    ("piqa", "", "holds no records"),
    ("piqa", "\n\n  \n", "holds no records"),
    ("piqa", json.dumps(VALID["piqa"]) + "\n{not json\n", "piqa.jsonl line 2: not valid JSON"),
    ("lambada_openai", b"\xff\xfe broken bytes\n", "not UTF-8"),
]


@pytest.fixture(scope="module")
def env(tiny_hf_with_tokenizer, tmp_path_factory):
    """Paths the cases refer to: models broken in one way each, task files, odd files."""
    import shutil
    base = tmp_path_factory.mktemp("bad_inputs")
    paths = {"hf": tiny_hf_with_tokenizer}
    data = base / "data"
    data.mkdir()
    for task, record in VALID.items():
        (data / f"{task}.jsonl").write_text(json.dumps(record) + "\n")
    (data / "lambada_openai.train.jsonl").write_text(json.dumps(VALID["lambada_openai"]) + "\n")
    paths["data"] = str(data)
    (base / "file.txt").write_text("some text for perplexity, long enough to score a few tokens.\n")
    paths["file"] = str(base / "file.txt")
    (base / "empty.txt").write_text("")
    paths["empty_file"] = str(base / "empty.txt")
    (base / "empty.jsonl").write_text("")
    paths["empty_jsonl"] = str(base / "empty.jsonl")
    (base / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8\n")
    paths["binary_file"] = str(base / "binary.txt")
    (base / "broken.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    paths["broken_jsonl"] = str(base / "broken.jsonl")
    (base / "tokenizer.json").write_text("{not a tokenizer")
    paths["bad_tokenizer_json"] = str(base / "tokenizer.json")
    (base / "broken.py").write_text("def get_config(:\n")
    paths["syntax_error"] = str(base / "broken.py")
    (base / "no_get_config.py").write_text("x = 1\n")
    paths["no_get_config"] = str(base / "no_get_config.py")

    def variant(name, edit_config=None, drop=(), write=None):
        d = base / name
        shutil.copytree(tiny_hf_with_tokenizer, d)
        if edit_config is not None:
            config = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps(edit_config(config)))
        for f in drop:
            os.remove(d / f)
        if write:
            (d / write[0]).write_bytes(write[1])
        paths[name] = str(d)

    variant("hf_bad_config", lambda c: {**c, "num_layers": "two"})
    variant("hf_list_config", lambda c: [c])
    variant("hf_odd_heads", lambda c: {**c, "num_heads": 5})
    variant("hf_gpt2", lambda c: {**c, "model_type": "gpt2"})
    variant("hf_no_tokenizer", drop=[f for f in os.listdir(tiny_hf_with_tokenizer)
                                     if f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")])
    variant("hf_bad_weights", write=("model.safetensors", b"\x00" * 64))
    variant("hf_no_weights", drop=["model.safetensors"])
    return paths


def run_main(command, argv, capsys):
    """(exit code, stderr) of `python -m neojax.<command> argv`, run in this process."""
    return exit_of(MAINS[command], argv, capsys)


def assert_one_clear_line(code, err, expect):
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0], (expect, lines[0])


def _fill(arg, paths, tmp):
    for key, value in {"tmp": tmp, **paths}.items():
        arg = arg.replace("{" + key + "}", str(value))
    return arg


@pytest.mark.slow
@pytest.mark.parametrize("command,argv,expect", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_command_line(command, argv, expect, env, tmp_path, capsys):
    argv = [_fill(a, env, tmp_path) for a in argv]
    before = sorted(os.listdir(tmp_path))
    code, err = run_main(command, argv, capsys)
    assert_one_clear_line(code, err, expect)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written where the user pointed


@pytest.mark.parametrize("task,record,expect", BAD_RECORDS, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD_RECORDS)])
def test_bad_task_record_names_file_and_line(task, record, expect, env, tmp_path, capsys):
    lines = [json.dumps(VALID[task]), json.dumps(record)]
    (tmp_path / f"{task}.jsonl").write_text("\n".join(lines) + "\n")
    code, err = run_main("evaluate", ["--checkpoint", env["hf"], "--data_dir", str(tmp_path), "--tasks", task,
                                      "--output", str(tmp_path / "r.json")], capsys)
    assert_one_clear_line(code, err, expect)
    assert f"{task}.jsonl line 2:" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("task,content,expect", BAD_FILES, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD_FILES)])
def test_bad_task_file(task, content, expect, env, tmp_path, capsys):
    path = tmp_path / f"{task}.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = run_main("evaluate", ["--checkpoint", env["hf"], "--data_dir", str(tmp_path), "--tasks", task], capsys)
    assert_one_clear_line(code, err, expect)
    assert str(path) in err


# Problems met once the run has started (reading data, training the tokenizer, loading the base
# model): still one line, and the workdir gets no config.json or model card.
LATE = ["--config", "quickstart:smoke", "--workdir", "{tmp}/run", "--config.train.global_batch=8"]
LATE_CASES = [
    (LATE + ["--config.data.source=text_files", '--config.data.source_args={"paths": "{binary_file}"}'], "binary.txt"),
    (LATE + ["--config.data.source=text_files", '--config.data.source_args={"paths": "{empty_file}"}'],
     "yielded no text"),
    (LATE + ["--config.data.source=text_files", '--config.data.source_args={"paths": "{file}"}',
             "--config.data.train_sentencepiece=50000"], "cannot train a 50000-piece sentencepiece model"),
    (LATE + ["--config.data.tokenizer={file}", "--config.data.train_sentencepiece=0"], "file.txt is neither"),
    (LATE + ["--config.model.init_from={data}"], "cannot tell the checkpoint format"),
    (LATE + ["--config.data.source=jsonl", '--config.data.source_args={"paths": "{broken_jsonl}"}'], "broken.jsonl"),
]


@pytest.mark.parametrize("argv,expect", LATE_CASES, ids=[str(i) for i in range(len(LATE_CASES))])
def test_problems_met_while_starting_are_one_line(argv, expect, env, tmp_path, capsys):
    code, err = run_main("train", [_fill(a, env, tmp_path) for a in argv], capsys)
    assert_one_clear_line(code, err, expect)
    assert not os.path.exists(tmp_path / "run" / "config.json") and not os.path.exists(tmp_path / "run" / "model")


def test_count_of_bad_inputs():
    assert len(CASES) + len(BAD_RECORDS) + len(BAD_FILES) + len(LATE_CASES) >= 150


@pytest.mark.parametrize("command,argv,expect", [
    ("train", ["--config", "quickstart:smoke", "--workdir", "{tmp}/w", "--config.checkpoint.keep=0"], "keep=0"),
    ("evaluate", ["--checkpoint", "{tmp}/none", "--tasks", "piqa"], "--checkpoint"),
    ("generate", ["--checkpoint", "{tmp}/none", "--prompt", "a", "--temperature", "nan"], "--temperature"),
    ("convert", ["{tmp}/none", "{tmp}/out", "--to", "hf"], "SRC"),
    ("sharding", ["--mesh", "data=2,data=4"], "given twice"),
])
@pytest.mark.slow
def test_real_command_lines_print_one_line(command, argv, expect, tmp_path):
    """As a user runs them: `python -m neojax.<command>` in a fresh process."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = subprocess.run([sys.executable, "-m", f"neojax.{command}", *argv], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert_one_clear_line(r.returncode, r.stderr, expect)
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "neojax.sharding", "--mesh", "data=2,data=4"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env={**os.environ, "NEOJAX_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "given twice" in r.stderr


@pytest.mark.slow
def test_what_would_change_a_result_is_handled_and_said(env, tmp_path, capsys, monkeypatch):
    """Not errors, but never silent: a byte-order mark is stripped with a note (task files and prompt
    files alike), a context cut to --max_len is stated in the output and the log, results on the
    shipped sample records say they are made up, and a metric's missing package is named before
    any work."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "piqa.jsonl").write_text("\ufeff" + json.dumps(VALID["piqa"]) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"
    code, err = run_main("evaluate", ["--checkpoint", env["hf"], "--data_dir", str(data), "--tasks", "piqa",
                                      "--output", str(out)], capsys)
    assert code == 0 and "starts with a UTF-8 byte-order mark" in err and json.loads(out.read_text())["piqa"]["n"] == 1
    code, err = run_main("evaluate", ["--checkpoint", env["hf"], "--data_dir", env["data"], "--tasks",
                                      "lambada_openai", "--max_len", "3", "--output", str(out)], capsys)
    assert code == 0 and json.loads(out.read_text())["lambada_openai"]["truncated_requests"] == 1
    assert "lambada_openai: 1 request(s) lost context tokens to max_len 3" in err
    capsys.readouterr()
    assert cli.run(MAINS["evaluate"], ["--checkpoint", env["hf"], "--sample_tasks", "--tasks", "piqa", "--output",
                                       str(out)]) == 0
    written = json.loads(out.read_text())["config"]
    assert "made-up records" in capsys.readouterr().out and "made-up" in written["sample_tasks"]
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # not installed
    code, err = run_main("evaluate", ["--checkpoint", env["hf"], "--data_dir", env["data"], "--tasks", "wmt16-de-en"],
                         capsys)
    assert code == 2 and "needs the optional package sacrebleu" in err
    (tmp_path / "prompts.txt").write_text("\ufeffOnce upon\n", encoding="utf-8")
    texts = []
    for given in (["--prompt_file", str(tmp_path / "prompts.txt")], ["--prompt", "Once upon"]):
        assert cli.run(MAINS["generate"], ["--checkpoint", env["hf"], "--max_new_tokens", "4", *given]) == 0
        texts.append(capsys.readouterr())
    assert texts[0].out == texts[1].out and "starts with a UTF-8 byte-order mark" in texts[0].err
