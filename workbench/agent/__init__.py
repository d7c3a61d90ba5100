"""The agent side of a run: the model registry, the LLM client, the tools, the loop and the
scripted demo model."""
