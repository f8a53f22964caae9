"""Prompt token counts for ``usage``: the model's own tokenizer and chat template, exactly as
the node tokenizes a job's input (``verinfer.inputs.tokenize_input``)."""

from __future__ import annotations

import threading
from typing import Any

from verinfer.inputs import InputFormatError, tokenize_input
from verinfer.tokenizers_local import find_model_dir


class PromptCounter:
    """Counts prompt tokens per model id; 0 when no local copy of the model is found."""

    def __init__(self) -> None:
        self._tokenizers: dict[bytes, Any] = {}
        self._lock = threading.Lock()

    def tokenizer(self, model_id: bytes) -> Any:
        """The model's transformers tokenizer, loaded once (None without local files)."""
        with self._lock:
            if model_id not in self._tokenizers:
                path = find_model_dir(model_id)
                tok = None
                if path is not None:
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(str(path))
                self._tokenizers[model_id] = tok
            return self._tokenizers[model_id]

    def count(self, model_id: bytes, data: bytes) -> int:
        """Number of prompt tokens the node feeds the model for input ``data``."""
        tok = self.tokenizer(model_id)
        if tok is None:
            return 0
        try:
            return len(tokenize_input(tok, data))
        except InputFormatError:
            return 0
