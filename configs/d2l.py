"""Doc-to-LoRA training (method 'd2l').

  python -m hyperlora_jax.train --config=configs/d2l.py:PRESET --workdir=W [--config.key=value ...]

Presets:
  toy             the embedded toy world: NIAH on the shipped toy base (window W = 128), CE objective, chunking;
                  ends with the NIAH table (no context / in context / D2L at W/2 .. 8W) in W/eval/results.json.
  gemma2_2b       main experiment, stage 1 (per_layer_activations, down_proj r=8, perceiver 8 latents x 9 blocks,
                  context distillation with top-16, L1 0.1, NEFTune 5, lr 4e-5 cosine, 80k steps, grad-accum 8;
                  contexts up to 4096 tokens as one chunk, as the reference's stage 1 never chunks).
  gemma2_2b_chunked, mistral_7b_chunked, qwen3_4b_chunked   the main experiment, stage 2: from stage 1's
                  trainable parameters (init_from = the stage-1 workdir; fresh optimizer), 20k steps, lr 2e-5,
                  2000 warm-up steps, grad-accum 16; contexts in 1..8 chunks of 25..512 tokens (chunk counts
                  1: 0.5, 2: 0.125, 3..8: 0.0625 each), QA turns up to 512 tokens.
  gemma2_2b_niah  NIAH (early_exit at L//4, 208 latents x 8 blocks, CE, L1 1.5, NEFTune 0, grad-accum 16).
  mistral_7b, qwen3_4b   the main experiment on those base models (same hyperparameters).
  smollm2         skeleton for SmolLM2-135M-Instruct (model.base_model = the directory `convert gguf` wrote):
                  early_exit at layer 7 (L//4), Perceiver 256 wide x 4 blocks, KD with the base as its own teacher
                  (the document in its context), on generated fictional facts (data.source fictional_facts,
                  documents of 1..3 entity paragraphs), 32 documents per step packed 8 per row; evaluate with
                  `python -m hyperlora_jax.cli.evaluate --suites facts --lengths 128,256,512,1024` (eval/facts.py).
The published presets need model.base_model (a local HF directory), a prepared dataset and, for *_chunked,
init_from (the stage-1 workdir); paths are placeholders to override on the command line, e.g.
  --config.model.base_model=/models/gemma-2-2b-it --config.data.tfds_dir=/data/tfds --config.data.tfds_name=d2l_qa/mine

Memory (model.*): chunk_group   chunks per context-encoder + hypernetwork call (1 = one at a time, lax.map);
  remat_chunks    recompute each chunk group's hypernetwork in the backward pass from its saved encoder features
                  (same gradients; gemma2_2b KD step, 4 one-chunk documents: XLA temporaries 35.6 -> 24.6 GiB for
                  ~11% more FLOPs; worth it for many or long chunks per step)

Data keys (data.*):
  source          toy_niah (generated, toy preset, toy/niah_sources.py) | d2l_qa | niah (prepared TFDS datasets,
                  methods/d2l_sources.py) | fictional_facts (generated documents + questions, toy/facts_source.py:
                  data.num_documents, facts_seed, min_facts, max_facts, min_entities, max_entities,
                  closed_answers: only answers from closed word lists, a curriculum)
  tfds_dir        directory the d2l_qa / niah dataset was prepared in with hyperlora_jax.data.tfds (array_record)
  tfds_name       builder[/config[/version]]; '' = d2l_qa (its default config) resp. niah/reference
  split           TFDS split string, e.g. train, train[:95%], train_32_128+train_128_256
  chunk_tokens, max_chunks, chunk_probs, min_chunk_tokens   the reference's training chunking: chunk count drawn
                  from chunk_probs (counts 1..len) within ceil(L/chunk_tokens)..ceil(L/min_chunk_tokens) for L
                  templated context ids; documents needing more than max_chunks chunks are skipped and counted
  query_len       student row length (QA turn + response); longer QAs are skipped and counted (max_qas_len)
  max_response_tokens   response positions R (capped at query_len - 1): the student's (and teacher's) LM head
                  runs on these R rows only; a longer response is skipped and counted
  teacher_len     loss.kind 'kd' only: the teacher row length (document in context + the same QA;
                  0 = max_chunks*chunk_tokens + query_len + 16)
  pack_docs       D > 0: packed batches (methods/d2l_pack.py) — D documents per context-encoder row and per teacher
                  row (segment ids, exact: same loss and gradients as padded), student rows cut to the batch's
                  longest QA; row lengths follow the global batch (rounded up, 8 buckets per octave), so
                  chunk_tokens / query_len / teacher_len only bound single documents. batch_size (documents) must
                  be a multiple of D x grad_accum_steps x processes. 0 = one padded row per document.
                  The published presets pack 8 documents per row, 8 rows per step (one per micro-batch): 64 documents
                  per step (the reference's step is 8 GPUs x 8 accumulation x one pack of <= 4096 context tokens,
                  i.e. several hundred short documents); the toy preset stays padded (its 64-token chunks and
                  24-token queries leave little padding, and batch_chunk_count already trims chunk slots).
"""
import ml_collections

from hyperlora_jax.config_defaults import trainer_defaults


def _common():
    c = trainer_defaults()
    c.method = "d2l"
    c.model = ml_collections.ConfigDict(dict(
        base_model="", ctx_encoder_type="per_layer_activations", layer_idx=0, target_modules=("down_proj",), r=8,
        latent_size=512, n_latent_queries=8, num_blocks=9, num_pre_head_layers=1, n_heads=16, head_dim=128,
        num_kv_heads=4, chunk_group=1, remat_chunks=False, scaler_b_init=0.0,
        attention="auto"))  # attention kernel: auto (cudnn on GPU, splash on TPU, else xla) | xla | cudnn | splash
    c.loss = ml_collections.ConfigDict(dict(kind="kd", top_k=16, l1_coef=0.1, neftune_alpha=5.0))
    c.data = ml_collections.ConfigDict(dict(source="d2l_qa", chunk_tokens=512, max_chunks=1, chunk_probs=(1.0,),
                                            query_len=2048, min_doc_len=25, curriculum_examples=0,
                                            batch_chunk_count=False, tfds_dir="", tfds_name="", split="train",
                                            min_chunk_tokens=25, max_response_tokens=256, teacher_len=0,
                                            pack_docs=0))
    c.eval = ml_collections.ConfigDict(dict(lengths=(), n=100, seed=1234, batch_size=8))
    # the references' optimiser: AdamW lr 4e-5, cosine to 1e-7 after 100 warm-up steps, weight decay 0.01
    c.learning_rate, c.warmup_steps, c.schedule, c.end_lr_factor = 4e-5, 100, "cosine", 1e-7 / 4e-5
    c.weight_decay, c.max_grad_norm = 0.01, 1.0
    c.compute_dtype = "bfloat16"
    c.seed = 42
    c.checkpoint_every_steps, c.keep_checkpoints, c.log_every_steps = 5000, 2, 100
    return c


def get_config(preset: str = "toy"):
    c = _common()
    if preset == "toy":
        # per_layer_activations (the embedding-layer features carry the digits' identities), scaler_B starting at 1
        # and a one-chunk length curriculum: each is needed for the context path to switch on reliably at toy
        # scale (see methods/d2l.py init_trainable and toy/niah_sources.py d2l_toy_niah); one chunk count per batch
        # (data.batch_chunk_count) so a step pays only for the chunk slots its documents use
        c.model.update(dict(ctx_encoder_type="per_layer_activations", r=8, latent_size=64, n_latent_queries=8,
                            num_blocks=2, n_heads=4, head_dim=16, num_kv_heads=2,
                            scaler_b_init=1.0))
        c.loss.update(dict(kind="ce", l1_coef=0.0, neftune_alpha=0.0))
        c.data.update(dict(source="toy_niah", chunk_tokens=64, max_chunks=4, chunk_probs=(0.4, 0.2, 0.2, 0.2),
                           query_len=24, max_response_tokens=8, min_doc_len=32, curriculum_examples=200 * 16,
                           batch_chunk_count=True))
        c.eval.update(dict(lengths=(64, 128, 256, 512, 1024), n=32, seed=1234, batch_size=16))
        c.compute_dtype = "float32"
        c.seed = 0
        c.num_train_steps, c.batch_size = 1000, 16
        c.learning_rate, c.warmup_steps, c.end_lr_factor = 1e-3, 50, 0.1
        c.checkpoint_every_steps, c.keep_checkpoints, c.log_every_steps = 250, 2, 20
    elif preset in ("gemma2_2b", "mistral_7b", "qwen3_4b"):
        c.model.base_model = {"gemma2_2b": "/path/to/gemma-2-2b-it", "mistral_7b": "/path/to/Mistral-7B-Instruct-v0.2",
                              "qwen3_4b": "/path/to/Qwen3-4B-Instruct-2507"}[preset]
        c.num_train_steps, c.batch_size, c.grad_accum_steps = 80_000, 64, 8
        # stage 1 does not chunk: contexts up to the reference's packed context length (4096) are one chunk;
        # packed: 8 documents per row, one row per micro-batch
        c.data.chunk_tokens, c.data.pack_docs = 4096, 8
    elif preset in ("gemma2_2b_chunked", "mistral_7b_chunked", "qwen3_4b_chunked"):
        c = get_config(preset[:-len("_chunked")])
        c.init_from = "/path/to/stage1_workdir"
        c.num_train_steps, c.batch_size, c.grad_accum_steps = 20_000, 128, 16
        c.learning_rate, c.warmup_steps, c.end_lr_factor = 2e-5, 2000, 1e-7 / 2e-5
        c.data.update(dict(chunk_tokens=512, min_chunk_tokens=25, max_chunks=8,
                           chunk_probs=(0.5, 0.125) + (0.0625,) * 6, query_len=512))
    elif preset == "gemma2_2b_niah":
        c.model.base_model = "/path/to/gemma-2-2b-it"
        c.model.update(dict(ctx_encoder_type="early_exit", layer_idx=0, n_latent_queries=208, num_blocks=8))
        c.loss.update(dict(kind="ce", l1_coef=1.5, neftune_alpha=0.0))
        c.data.update(dict(source="niah", max_chunks=8, chunk_probs=(0.5, 0.125) + (0.0625,) * 6,
                           tfds_name="niah/reference", split="train_32_128+train_128_256", query_len=256))
        c.seed, c.grad_accum_steps, c.batch_size, c.num_train_steps = 1, 16, 128, 20_000
        c.data.pack_docs = 8
    elif preset == "smollm2":
        # SmolLM2-135M-Instruct (llama: 30 layers, hidden 576, 9 heads / 3 kv heads), converted from its GGUF
        # (python -m hyperlora_jax.cli.convert gguf SmolLM2-135M-Instruct.Q4_1.gguf DIR). Skeleton hyperparameters:
        # early-exit encoder at L // 4, a small Perceiver, KD with the base model reading the document as teacher,
        # on generated fictional facts (nothing the base model can know without the document).
        c.model.base_model = "/path/to/SmolLM2-135M-Instruct"
        c.model.update(dict(ctx_encoder_type="early_exit", layer_idx=7, target_modules=("down_proj",), r=8,
                            latent_size=256, n_latent_queries=8, num_blocks=4, n_heads=4, head_dim=64,
                            num_kv_heads=2))
        c.loss.update(dict(kind="kd", top_k=16, l1_coef=0.1, neftune_alpha=5.0))
        c.data.update(dict(source="fictional_facts", chunk_tokens=128, min_chunk_tokens=25, max_chunks=4,
                           chunk_probs=(0.4, 0.2, 0.2, 0.2), query_len=96, max_response_tokens=16,
                           teacher_len=0, pack_docs=8))
        c.data.num_documents, c.data.facts_seed, c.data.min_facts, c.data.max_facts = 100_000, 0, 3, 7
        c.data.min_entities, c.data.max_entities = 1, 3  # documents of 1..3 paragraphs (~60..350 tokens)
        c.data.closed_answers = False  # True: only closed-word-list answers (a curriculum; see fictional_facts)
        c.num_train_steps, c.batch_size, c.grad_accum_steps = 5_000, 32, 1
        c.learning_rate, c.warmup_steps, c.end_lr_factor = 1e-4, 100, 0.1
        c.checkpoint_every_steps, c.log_every_steps = 1000, 20
    else:
        raise ValueError(f"unknown preset {preset!r} for configs/d2l.py "
                         "(toy, gemma2_2b, mistral_7b, qwen3_4b, their *_chunked stage 2, gemma2_2b_niah, smollm2)")
    return c
