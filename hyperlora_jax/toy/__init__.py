"""The toy world: a tiny character-level base model, toy NIAH documents, fictional facts and toy string tasks, small
enough that Doc-to-LoRA and Text-to-LoRA visibly work on a CPU in minutes. Their training sources and evaluations
(``*_sources.py``, ``facts_source.py``, ``eval_*.py``) register in ``hyperlora_jax.data.sources``."""
