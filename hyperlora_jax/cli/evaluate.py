"""The evaluation harness: ``python -m hyperlora_jax.cli.evaluate --config=configs/X.py[:preset] [--checkpoint DIR]
[--workdir W] [--config.key=value] [suite options]``.

Suites (``--suites``, default by the config's method: d2l → niah (+ qa when --qa_file is given); t2l → t2l_bench):
  niah       NIAH exact match and ROUGE-L by length bin (eval/niah.py): the toy generator at ``--lengths``
             (default config ``eval.lengths``) in the toy world, or reference-format JSONL (``--niah_file``)
  qa         closed-book QA token F1 / EM / ROUGE-L from local JSONL (``--qa_file``; eval/qa.py)
  facts      generated fictional-fact QA (no download) at document lengths ``--lengths`` (tokens; default config
             ``eval.lengths``), exact match / token F1 / contains (eval/facts.py): for real base models, e.g. SmolLM2
  t2l_bench  T2L benchmark prompts, multiple choice by log-likelihood or generation (``--bench_file``;
             eval/t2l_bench.py)
Document suites compare no_context, in_context, in_context_truncated (middle-truncated to ``--truncate_to`` tokens,
default the native window), d2l and cd (per-document context distillation, ``--cd_*``, with its wall time);
t2l_bench compares base, description_in_prompt and t2l (``--methods`` selects).

``--checkpoint``: a training workdir (or its checkpoints/), a ``convert d2l`` or ``convert t2l`` output directory
(eval/systems.py). Without it the hypernetwork is randomly initialised and labelled "(random init)".
Results: ``WORKDIR/eval/<name>.json`` (list of rows) and ``.md`` (tables, also printed), each written to a temporary
file and renamed; ``--workdir`` defaults to the checkpoint's training workdir. ``--warmup`` (document suites) runs
each method once untimed per length bin so that wall / adapter times leave JIT compilation out.
Expected errors: one line ``error: ...`` on stderr, exit status 2.

Examples:
  python -m hyperlora_jax.cli.evaluate --config=configs/d2l.py:toy --checkpoint /tmp/d2l_toy --workdir /tmp/ev \\
      --n 16 --lengths 64,128,256,512,1024 --cd_steps 100 --cd_lr 1e-2 --warmup
  python -m hyperlora_jax.cli.evaluate --config=configs/d2l.py:toy --workdir /tmp/ev --n 8 --lengths 64,256 \\
      --cd_steps 50 --cd_lr 1e-2 --qa_file my_qa.jsonl
  python -m hyperlora_jax.cli.evaluate --config=configs/d2l.py:gemma2_2b --checkpoint ckpt/d2l_gemma \\
      --config.model.base_model=models/gemma-2-2b-it --suites qa --qa_file squad.jsonl --workdir /tmp/ev
  python -m hyperlora_jax.cli.evaluate --config=configs/d2l.py:smollm2 --checkpoint /tmp/d2l_smol \\
      --config.model.base_model=models/smollm2 --suites facts --lengths 128,256,512,1024 --n 64
  python -m hyperlora_jax.cli.evaluate --config=configs/t2l.py:tiny --checkpoint ckpt/t2l_L --bench_file arc.jsonl \\
      --workdir /tmp/ev
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

SUITES = ("niah", "qa", "facts", "t2l_bench")


@dataclasses.dataclass
class Options:
    checkpoint: Optional[str] = None
    step: Optional[int] = None
    workdir: Optional[str] = None
    name: str = "evaluate"
    suites: Sequence[str] = ()
    methods: Sequence[str] = ()
    n: Optional[int] = None
    lengths: Sequence[int] = ()
    niah_files: Sequence[str] = ()
    qa_files: Sequence[str] = ()
    bench_files: Sequence[str] = ()
    length_bins: Sequence[int] = ()
    batch_size: Optional[int] = None
    max_new_tokens: Optional[int] = None
    qa_template: Optional[str] = None
    truncate_to: Optional[int] = None
    warmup: bool = False
    mc_mode: str = "loglik"
    cd_steps: int = 300
    cd_lr: float = 1e-4
    cd_rank: int = 8
    cd_alpha: float = 16.0
    cd_top_k: int = 16
    seed: Optional[int] = None


def _suites(config, opts: Options) -> list[str]:
    method = config.get("method")
    if method not in ("d2l", "t2l"):
        raise ValueError(f"evaluate supports configs of method d2l or t2l, got {method!r}")
    if opts.suites:
        bad = [s for s in opts.suites if s not in SUITES]
        if bad:
            raise ValueError(f"unknown suite(s) {', '.join(bad)} (known: {', '.join(SUITES)})")
        suites = list(opts.suites)
    else:
        suites = ["t2l_bench"] if method == "t2l" else ["niah"] + (["qa"] if opts.qa_files else [])
    wrong = [s for s in suites if (s == "t2l_bench") != (method == "t2l")]
    if wrong:
        raise ValueError(f"suite(s) {', '.join(wrong)} do not apply to a {method} config")
    if "qa" in suites and not opts.qa_files:
        raise ValueError("the qa suite needs --qa_file FILE.jsonl (fields context, question, answers)")
    if "t2l_bench" in suites and not opts.bench_files:
        raise ValueError("the t2l_bench suite needs --bench_file FILE.jsonl (fields description, prompt, answer)")
    for f in list(opts.niah_files) + list(opts.qa_files) + list(opts.bench_files):  # before loading any model
        if not os.path.isfile(f):
            raise ValueError(f"evaluation data file {f!r} does not exist")
    return suites


def _workdir(opts: Options) -> str:
    if opts.workdir:
        return opts.workdir
    if opts.checkpoint:
        from hyperlora_jax.eval.systems import checkpoint_kind
        kind, path = checkpoint_kind(opts.checkpoint)
        if kind == "train":
            return path
    raise ValueError("pass --workdir (where eval/<name>.json goes); it defaults only to a training workdir given "
                     "as --checkpoint")


def run(config, opts: Options) -> list[dict]:
    """Evaluates per ``config`` and ``opts``; writes the results files and returns the rows."""
    from hyperlora_jax.eval import records

    suites = _suites(config, opts)
    workdir = _workdir(opts)
    ev = config.get("eval") or {}
    seed = int(opts.seed if opts.seed is not None else ev.get("seed", 42))
    n = opts.n if opts.n is not None else int(ev.get("n", 500))
    batch = int(opts.batch_size or ev.get("batch_size", 8))
    if batch < 1 or n < 1:
        raise ValueError(f"--batch_size and --n must be at least 1, got {batch} and {n}")
    if opts.truncate_to is not None and opts.truncate_to < 2:
        raise ValueError(f"--truncate_to must be a token count of at least 2, got {opts.truncate_to}")
    rows: list[dict] = []
    if config.method == "t2l":
        from hyperlora_jax.eval import t2l_bench
        from hyperlora_jax.eval.systems import RANDOM_INIT, load_t2l
        system = load_t2l(config, opts.checkpoint, opts.step)
        if system.source == RANDOM_INIT:
            print("warning: no --checkpoint: the T2L hypernetwork is randomly initialised (rows 't2l (random init)')",
                  file=sys.stderr)
        methods = list(opts.methods) or list(t2l_bench.T2L_METHODS)
        for f in opts.bench_files:
            data = t2l_bench.load_rows(f, n, seed)
            rows += t2l_bench.evaluate(system, data, records.dataset_name(f), methods, batch_size=batch,
                                       max_new_tokens=int(opts.max_new_tokens or 256), mc_mode=opts.mc_mode)
    else:
        from hyperlora_jax.eval import niah, qa
        from hyperlora_jax.eval.cd import CDOptions
        from hyperlora_jax.eval.doc_eval import DOC_METHODS, check_methods
        from hyperlora_jax.eval.systems import RANDOM_INIT, load_d2l
        methods = check_methods(list(opts.methods) or list(DOC_METHODS))
        if "niah" in suites and not opts.niah_files and not (opts.lengths or ev.get("lengths")):
            raise ValueError("the niah suite needs --lengths (toy generator) or --niah_file FILE.jsonl")
        if "facts" in suites and not (opts.lengths or ev.get("lengths")):
            raise ValueError("the facts suite needs --lengths (document tokens, e.g. 128,256,512)")
        system = load_d2l(config, opts.checkpoint, opts.step)
        if system.source == RANDOM_INIT:
            print("warning: no --checkpoint: the D2L hypernetwork is randomly initialised (rows 'd2l (random init)')",
                  file=sys.stderr)
        max_new = int(opts.max_new_tokens or (8 if system.toy else 32 if suites == ["facts"] else 256))
        cd = CDOptions(steps=opts.cd_steps, lr=opts.cd_lr, rank=opts.cd_rank, alpha=opts.cd_alpha,
                       top_k=opts.cd_top_k, target_modules=tuple(system.d2l.hyper_cfg.target_modules),
                       response_tokens=max_new, seed=seed)
        kw = dict(batch_size=batch, max_new_tokens=max_new, cd=cd, truncate_to=opts.truncate_to,
                  warmup=opts.warmup)
        if "niah" in suites:
            if opts.niah_files:
                for f in opts.niah_files:
                    ex = niah.file_examples(system.tok, f, n, seed, opts.length_bins)
                    rows += niah.evaluate(system, ex, records.dataset_name(f), methods, **kw)
            else:
                if not system.toy:
                    raise ValueError("the toy NIAH generator needs the toy base model; pass --niah_file for others")
                lengths = [int(x) for x in (opts.lengths or ev.get("lengths"))]
                rows += niah.evaluate(system, niah.toy_examples(system.tok, lengths, n, seed), "toy_niah", methods,
                                      **kw)
        if "facts" in suites:
            from hyperlora_jax.eval import facts
            lengths = [int(x) for x in (opts.lengths or ev.get("lengths"))]
            rows += facts.evaluate(system, facts.facts_examples(system.tok, lengths, n, seed), methods, **kw)
        if "qa" in suites:
            template = opts.qa_template or ("{question}" if system.toy else qa.QA_TEMPLATE)
            for f in opts.qa_files:
                ex = qa.file_examples(f, n, seed, template)
                rows += qa.evaluate(system, ex, records.dataset_name(f), methods, bins=opts.length_bins, **kw)
    rows = records.clean(rows)
    jpath, mpath = records.write_results(rows, workdir, opts.name)
    print(records.markdown(rows), flush=True)
    print(f"wrote {jpath} and {mpath}", flush=True)
    return rows


# ============================================================================================ command line
def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{flag} must be comma-separated integers, got {text!r}") from None


def _options(FLAGS) -> Options:
    split = lambda s: [x.strip() for x in (s or "").split(",") if x.strip()]
    return Options(
        checkpoint=FLAGS.checkpoint, step=FLAGS.step, workdir=FLAGS.workdir, name=FLAGS.name,
        suites=split(FLAGS.suites), methods=split(FLAGS.methods), n=FLAGS.n, lengths=_ints(FLAGS.lengths, "lengths"),
        niah_files=FLAGS.niah_file or [], qa_files=FLAGS.qa_file or [], bench_files=FLAGS.bench_file or [],
        length_bins=_ints(FLAGS.length_bins, "length_bins"), batch_size=FLAGS.batch_size,
        max_new_tokens=FLAGS.max_new_tokens, qa_template=FLAGS.qa_template, truncate_to=FLAGS.truncate_to,
        warmup=FLAGS.warmup,
        mc_mode=FLAGS.mc_mode,
        cd_steps=FLAGS.cd_steps, cd_lr=FLAGS.cd_lr, cd_rank=FLAGS.cd_rank, cd_alpha=FLAGS.cd_alpha,
        cd_top_k=FLAGS.cd_top_k, seed=FLAGS.seed)


def define_flags(fv, argv: Sequence[str]):
    """The command's flags on the absl ``FlagValues`` ``fv`` (its own object, so several runs can share a process).
    ``argv`` (with the program name) is where ml_collections finds the ``--config.key=value`` overrides."""
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/d2l.py:toy", lock_config=True,
                                    flag_values=fv, sys_argv=list(argv))
    kw = {"flag_values": fv}
    flags.DEFINE_string("checkpoint", None, "training workdir, or a `convert d2l` / `convert t2l` output directory",
                        **kw)
    flags.DEFINE_integer("step", None, "checkpoint step of a training workdir (default: the newest)", **kw)
    flags.DEFINE_string("workdir", None, "results go to WORKDIR/eval/<name>.json|.md", **kw)
    flags.DEFINE_string("name", "evaluate", "results file name", **kw)
    flags.DEFINE_string("suites", "", f"comma-separated subset of {', '.join(SUITES)}", **kw)
    flags.DEFINE_string("methods", "", "comma-separated methods (default: all of the suite)", **kw)
    flags.DEFINE_integer("n", None, "examples per length bin / per file, drawn with the seed; a file with fewer "
                         "rows is used whole (default: config eval.n, else 500 as the references)", **kw)
    flags.DEFINE_string("lengths", "", "toy NIAH lengths / facts document tokens, e.g. 64,128,256 (default: config "
                        "eval.lengths)", **kw)
    flags.DEFINE_multi_string("niah_file", [], "NIAH JSONL {context, prompt, response} (repeatable)", **kw)
    flags.DEFINE_multi_string("qa_file", [], "QA JSONL {context, question, answers} (repeatable)", **kw)
    flags.DEFINE_multi_string("bench_file", [], "T2L benchmark JSONL {description, prompt, answer, choices?, labels?, "
                              "answer_type?, prefill?} (repeatable)", **kw)
    flags.DEFINE_string("length_bins", "", "edges of context-length bins in tokens for JSONL data, e.g. 128,512",
                        **kw)
    flags.DEFINE_integer("batch_size", None, "examples per batch (default: config eval.batch_size, else 8)", **kw)
    flags.DEFINE_integer("max_new_tokens", None, "greedy answer length (default: 8 in the toy world, 32 for the "
                         "facts suite alone, else 256)",
                         **kw)
    flags.DEFINE_string("qa_template", None, "question turn template with {question} (default: the reference's)",
                        **kw)
    flags.DEFINE_integer("truncate_to", None, "in_context_truncated: prompt + answer budget in tokens (default: the "
                         "base model's native window, max_position_embeddings)", **kw)
    flags.DEFINE_bool("warmup", False, "document suites: run each method once untimed on the first batch of each "
                      "bin, so wall/adapt times leave JIT compilation out", **kw)
    flags.DEFINE_enum("mc_mode", "loglik", ["loglik", "generate"], "multiple choice by log-likelihood or generation",
                      **kw)
    flags.DEFINE_integer("cd_steps", 300, "context distillation: optimizer steps per document (reference 300)", **kw)
    flags.DEFINE_float("cd_lr", 1e-4, "context distillation: peak learning rate, cosine decay (reference 1e-4)",
                       **kw)
    flags.DEFINE_integer("cd_rank", 8, "context distillation: LoRA rank (reference 8)", **kw)
    flags.DEFINE_float("cd_alpha", 16.0, "context distillation: LoRA alpha, scale alpha/r (reference 16)", **kw)
    flags.DEFINE_integer("cd_top_k", 16, "context distillation: teacher top-k (reference 16)", **kw)
    flags.DEFINE_integer("seed", None, "sampling seed (default: config eval.seed, else 42)", **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: ``argv`` without the program name (default ``sys.argv[1:]``); returns the exit status.
    Bad flags and every expected error: one line ``error: ...`` on stderr, status 2."""
    from absl import flags
    from absl import logging as absl_logging

    from hyperlora_jax.cli import common as cli

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs at INFO
    argv = ["evaluate"] + list(sys.argv[1:] if argv is None else argv)
    fv = flags.FlagValues()
    define_flags(fv, argv)

    def body(_):
        if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
            print(__doc__.strip() + "\n\nFlags:\n" + fv.get_help(include_special_flags=False))
            return 0
        try:
            fv(argv)
        except (AttributeError, KeyError) as e:  # a misspelt --config.key (the config is locked)
            raise cli.UsageError(f"unknown config key in a --config.* override: {str(e).strip(chr(34))}") from None
        except (flags.Error, TypeError, ValueError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise cli.UsageError(f"bad command line: {lines[-1] if lines else type(e).__name__}") from None
        if fv.config is None:
            raise cli.UsageError("--config=configs/X.py[:preset] is required")
        run(fv.config, _options(fv))
        return 0

    return cli.run(body, None, exit=False)


if __name__ == "__main__":
    sys.exit(main())
