"""Generate text with a base model, optionally with a PEFT LoRA adapter.

  python -m hyperlora_jax.cli.generate [--model DIR] [--lora PEFT_DIR] --prompt TEXT [--chat] [--max-new-tokens N]
      [--temperature T] [--top-p P] [--seed S] [--dtype float32|bfloat16]

Without --model the base model the --lora adapter records (adapter_config.json base_model_name_or_path) is used,
else the embedded tiny model; with both, the adapter's recorded base model must be --model. --chat wraps the prompt
as a user turn with the tokenizer's chat template. The prompt plus --max-new-tokens must fit the model's window
(max_position_embeddings); --temperature is finite and >= 0, --top-p in (0, 1]. Prints the generated text; the last
line is a JSON object with the prompt and new token ids. Errors: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json

from hyperlora_jax.cli import common as cli


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m hyperlora_jax.cli.generate", description=__doc__.splitlines()[0])
    cli.add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to the prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if not args.prompt.strip():
        raise cli.UsageError("--prompt is empty")
    if args.max_new_tokens < 1:
        raise cli.UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    cli.check_sampling(args.temperature, args.top_p)
    model_dir = cli.model_for_lora(args.model, args.lora)
    import jax.numpy as jnp

    from hyperlora_jax.generation import generate

    cfg, params, tok, tok_err = cli.load_model_and_tokenizer(model_dir, args.dtype)
    tok = cli.need_tokenizer(tok, tok_err)
    ids = cli.prompt_ids(tok, args.prompt, args.chat)
    if not ids:
        raise cli.UsageError("--prompt tokenizes to no tokens")
    cli.check_window(cfg, len(ids), args.max_new_tokens, extra_flag="--max-new-tokens")
    adapter = cli.load_lora(args.lora, cfg)
    stop = list(cfg.eos_token_ids)
    if tok.eos_token_id is not None and tok.eos_token_id not in stop:
        stop.append(tok.eos_token_id)
    new = generate(params, cfg, [list(ids)], adapter=adapter, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, stop_tokens=stop, seed=args.seed,
                   dtype=jnp.dtype(args.dtype), pad_id=tok.pad_token_id)[0]
    print(tok.decode(new, skip_special_tokens=True))
    print(json.dumps({"prompt_tokens": list(map(int, ids)), "tokens": new}))


if __name__ == "__main__":
    cli.run(main)
