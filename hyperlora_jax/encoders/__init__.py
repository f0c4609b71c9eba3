"""Sentence encoders used to embed T2L task descriptions.

Modules:
  bert            a flax.linen BERT encoder (``BertConfig``, ``BertModel``) with a safetensors loader.
  task_embedding  ``TaskDescriptionEncoder``: tokenizer + BERT + pooling + (L2, ×√d) normalisation.
"""
from hyperlora_jax.encoders.bert import (
    BertConfig,
    BertConfigError,
    BertModel,
    BertWeightsError,
    bert_forward,
    load_bert,
    load_bert_params,
    read_safetensors,
)
from hyperlora_jax.encoders.task_embedding import (
    TaskDescriptionEncoder,
    add_full_stop,
    normalize_task_embedding,
    pool_hidden_states,
)

__all__ = [
    "BertConfig",
    "BertConfigError",
    "BertModel",
    "BertWeightsError",
    "bert_forward",
    "load_bert",
    "load_bert_params",
    "read_safetensors",
    "TaskDescriptionEncoder",
    "add_full_stop",
    "normalize_task_embedding",
    "pool_hidden_states",
]
