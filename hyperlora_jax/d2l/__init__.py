"""Doc-to-LoRA (D2L) hypernetwork: Perceiver aggregator, HyperLoRA head, chunk combination, checkpoint map.

  perceiver       PerceiverConfig, Perceiver (the modified Idefics2 perceiver, masked GQA cross-attention)
  head            HyperLoRAHead (per-layer ResMLP, L2 norm, per-layer head, scalers, bias LoRA), combine_chunks
  hypernet        D2LHypernetConfig, D2LHypernet, init_params, generate_chunk_loras, generate_adapter
  checkpoint_map  torch state dict (reference keys) <-> Flax params
"""
from hyperlora_jax.d2l.head import HyperLoRAHead, combine_chunks
from hyperlora_jax.d2l.hypernet import (D2LHypernet, D2LHypernetConfig, bias_lora, generate_adapter,
                                        generate_chunk_loras, hypernet_intermediates, init_params)
from hyperlora_jax.d2l.perceiver import Perceiver, PerceiverConfig

__all__ = ["PerceiverConfig", "Perceiver", "HyperLoRAHead", "combine_chunks", "D2LHypernetConfig", "D2LHypernet",
           "init_params", "generate_chunk_loras", "generate_adapter", "bias_lora", "hypernet_intermediates"]
