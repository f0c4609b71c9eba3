"""The toy world: a tiny character-level base model, toy NIAH documents and toy string tasks, small enough that
Doc-to-LoRA and Text-to-LoRA visibly work on a CPU in minutes."""
