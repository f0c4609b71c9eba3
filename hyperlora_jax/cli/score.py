"""Score a continuation: the log-prob of each of its tokens given everything before it.

  python -m hyperlora_jax.cli.score [--model DIR] [--lora PEFT_DIR] (--prompt TEXT [--chat] --continuation TEXT |
      --prompt-ids 1,2,3 --continuation-ids 4,5) [--dtype float32|bfloat16]

Text is tokenized as ``tokenizer(prompt)`` followed by ``tokenizer(continuation, add_special_tokens=False)``;
with --chat the prompt is one user turn through the tokenizer's chat template plus the generation prompt (as
``generate --chat``), so the continuation is scored as the assistant's answer. Base model: as ``generate`` (the
--lora adapter's recorded base model when --model is absent; a mismatch is an error). Prompt plus continuation must
fit the model's window.
The last line of standard output is one JSON object: {"tokens": [...], "logprobs": [...], "sum": ...}.
"""
from __future__ import annotations

import argparse
import json

from hyperlora_jax.cli import common as cli


def _ids(text: str, flag: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise cli.UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise cli.UsageError(f"{flag} is empty")
    return ids


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m hyperlora_jax.cli.score", description=__doc__.splitlines()[0])
    cli.add_model_args(p)
    p.add_argument("--prompt")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to --prompt")
    p.add_argument("--continuation")
    p.add_argument("--prompt-ids")
    p.add_argument("--continuation-ids")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    text_mode = args.prompt is not None or args.continuation is not None
    ids_mode = args.prompt_ids is not None or args.continuation_ids is not None
    if text_mode == ids_mode:
        raise cli.UsageError("give either --prompt and --continuation, or --prompt-ids and --continuation-ids")
    import jax.numpy as jnp

    from hyperlora_jax.generation import score

    if ids_mode:
        if args.prompt_ids is None or args.continuation_ids is None:
            raise cli.UsageError("--prompt-ids and --continuation-ids go together")
        if args.chat:
            raise cli.UsageError("--chat applies to --prompt text, not to --prompt-ids")
        prompt, cont = _ids(args.prompt_ids, "--prompt-ids"), _ids(args.continuation_ids, "--continuation-ids")
    else:
        if args.prompt is None or args.continuation is None:
            raise cli.UsageError("--prompt and --continuation go together")
        if not args.prompt.strip():
            raise cli.UsageError("--prompt is empty")
        if not args.continuation:
            raise cli.UsageError("--continuation is empty")
    model_dir = cli.model_for_lora(args.model, args.lora)
    cfg, params, tok, tok_err = cli.load_model_and_tokenizer(model_dir, args.dtype)
    if not ids_mode:
        tok = cli.need_tokenizer(tok, tok_err)
        prompt = cli.prompt_ids(tok, args.prompt, args.chat)
        cont = list(tok(args.continuation, add_special_tokens=False)["input_ids"])
        if not prompt or not cont:
            raise cli.UsageError(f"--{'prompt' if not prompt else 'continuation'} tokenizes to no tokens")
    bad = [t for t in prompt + cont if not 0 <= t < cfg.vocab_size]
    if bad:
        raise cli.UsageError(f"token ids out of range [0, {cfg.vocab_size}): {bad[:5]}")
    cli.check_window(cfg, len(prompt) + len(cont), what="the prompt plus the continuation")
    adapter = cli.load_lora(args.lora, cfg)
    lp = score(params, cfg, [prompt], [cont], adapter=adapter, dtype=jnp.dtype(args.dtype))[0]
    logprobs = [float(x) for x in lp]
    print(json.dumps({"tokens": cont, "logprobs": logprobs, "sum": float(sum(logprobs))}))


if __name__ == "__main__":
    cli.run(main)
