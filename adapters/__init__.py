"""Per-model W4A8 ports (Qwen3, Qwen3-MoE, Ernie-4.5, Ernie-4.5-MoE): build, quantize/pack,
load, generate. Imports `kernels`, torch, transformers and safetensors; never `workbench`."""
