"""The model runtime: our own PyTorch implementation of the Llama family, run one layer range at a time.

``config`` parses a model's config.json, ``weights`` names a stage's tensors, ``shard`` runs a
stage with a per-session ``kv_cache``, and ``reference`` chains shards in one process.
"""
