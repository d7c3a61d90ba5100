"""Gold port: the workbench repository's adapter, vendored into `_gold` when the solution is applied."""

from ._gold.adapters.qwen3_moe import generate, load_model

__all__ = ["load_model", "generate"]
