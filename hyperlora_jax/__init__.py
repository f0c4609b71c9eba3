"""hyperlora_jax: Text-to-LoRA and Doc-to-LoRA hypernetworks in JAX/Flax.

Modules:
  config      ModelConfig read from a Hugging Face ``config.json`` (llama, mistral, qwen3, gemma2).
  model       the decoder (flax.linen, layers scanned over stacked weights) with LoRA injection points.
  lora        the adapter pytree (``Adapter``) and the one LoRA contraction used everywhere.
  hf_load     safetensors / HF directory loading into the stacked parameter tree.
  generation  KV-cache generation and continuation scoring.
  peft_io     PEFT adapter export / import / merge.
"""
__version__ = "0.1.0"
