"""W4A8 inference ports: one module per model family (see CONTRACT.md)."""
