"""The model store: import Hugging Face directories and GGUF files once, keep them as
safetensors with per-tensor sha256 hashes, and serve raw tensor bytes by memory map.

``store`` (ModelStore, StoredModel), ``manifest`` (Manifest, TensorEntry), ``tokenizer``
(TextTokenizer, StreamDecoder), ``default_model`` (the bundled SmolLM2-135M-Instruct).
Importing this package loads neither torch nor transformers.
"""
