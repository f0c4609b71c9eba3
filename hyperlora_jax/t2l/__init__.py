"""Text-to-LoRA (T2L): a hypernetwork that turns a task-description embedding into per-layer LoRA adapters.

  hypernet    ``T2LConfig``, the flax.linen ``T2LHypernet`` (variants L, M, S), ``init_params``,
              ``generate_adapters`` (task_emb [N, E] -> ``hyperlora_jax.lora.Adapter``).
  checkpoint  import of an official run directory (hypermod.pt + args.yaml + adapter_config.json) and the project's
              own format (config.json + params.safetensors).
"""
from hyperlora_jax.t2l.hypernet import (  # noqa: F401
    T2LConfig,
    T2LHypernet,
    encode_task,
    generate_adapters,
    generate_adapters_from_encoded,
    init_params,
    param_shapes,
)
