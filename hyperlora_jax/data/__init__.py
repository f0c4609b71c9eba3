"""Input pipelines: checkpointable iterators, example sources, tokenization and packing."""
