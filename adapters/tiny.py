"""Tiny random-weight HF checkpoints for every adapter family (nothing comes from a hub).

    python -m adapters.tiny qwen3 /tmp/tiny-qwen3 [--tier cpu|triton] [--seed 0] [--train-steps 200]

Each checkpoint exercises the quirks ports get wrong (../shared/REFERENCE.md): heads * head_dim
!= hidden, GQA, Qwen3 q_norm/k_norm (set away from 1 so that skipping them changes the
output), Ernie's interleaved rope, Ernie-MoE's dense layer 0, shared experts and a nonzero
e_score_correction_bias. The "cpu" tier is small enough for the Triton interpreter; the
"triton" tier has Triton-friendly sizes (hidden 256, head_dim 128, K multiples of 128).
With --train-steps the random model is then trained briefly (seconds on a CPU) on a synthetic
corpus in which every token has one successor (a fixed permutation): its greedy decoding is then
confident (top-1 leads top-2 by ~1-6 logits where the random model has near-ties within a few
tokens), so that checks can compare every generated token. A small byte-level BPE tokenizer with a ChatML template is trained offline on a built-in text,
so the chat path of `adapters.infer` works on these models too.
"""

import argparse
import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

FAMILIES = ("qwen3", "qwen3_moe", "ernie4_5", "ernie4_5_moe")
TIERS = {
    "cpu": dict(hidden_size=64, head_dim=32, intermediate_size=128, moe_intermediate_size=32),
    "triton": dict(hidden_size=256, head_dim=128, intermediate_size=512, moe_intermediate_size=128),
}
VOCAB_SIZE = 512
# What the released checkpoints have wherever a port could hard-code a value (Qwen3-0.6B and
# Qwen3-30B-A3B, ERNIE-4.5-0.3B and -21B-A3B config.json): a port that assumes Llama's theta 1e4
# or eps 1e-5 must fail on the tiny model as it would on the real one.
FAMILY_VALUES = {
    "qwen3": dict(rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen3_moe": dict(rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "ernie4_5": dict(rope_theta=5e5, rms_norm_eps=1e-5, tie_word_embeddings=True, use_bias=False),
    "ernie4_5_moe": dict(rope_theta=5e5, rms_norm_eps=1e-5, tie_word_embeddings=True, use_bias=False),
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = """The quick brown fox jumps over the lazy dog. Quantized inference keeps weights in four bits
and activations in eight bits. A transformer layer has attention, a feed-forward block and norms.
Mixture of experts routes every token to a few experts chosen by a router. Write a haiku about GPUs.
Hello! How are you today? Tell me about the weather, the mountains and the sea. 0123456789 +-*/=
"""


def make_config(family: str, tier: str = "cpu") -> transformers.PretrainedConfig:
    """The HF config of a tiny model of `family` (see FAMILIES) at `tier` (cpu or triton)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {tuple(TIERS)}")
    size = TIERS[tier]
    common = dict(vocab_size=VOCAB_SIZE, hidden_size=size["hidden_size"], num_attention_heads=4,
                  num_key_value_heads=2, head_dim=size["head_dim"], intermediate_size=size["intermediate_size"],
                  max_position_embeddings=512, bos_token_id=None, eos_token_id=2, pad_token_id=0,
                  **FAMILY_VALUES[family])
    if family == "qwen3":
        return transformers.Qwen3Config(num_hidden_layers=2, **common)
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(num_hidden_layers=2, num_experts=8,
                                           num_experts_per_tok=2, moe_intermediate_size=size["moe_intermediate_size"],
                                           norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                                           **common)
    if family == "ernie4_5":
        return transformers.Ernie4_5Config(num_hidden_layers=2, **common)
    return transformers.Ernie4_5_MoeConfig(num_hidden_layers=3, moe_num_experts=8, moe_k=2,
                                           moe_intermediate_size=size["moe_intermediate_size"],
                                           moe_num_shared_experts=2, moe_layer_start_index=1,
                                           moe_layer_end_index=2, moe_layer_interval=1, **common)


def model_class(config: transformers.PretrainedConfig) -> type:
    return {"qwen3": transformers.Qwen3ForCausalLM, "qwen3_moe": transformers.Qwen3MoeForCausalLM,
            "ernie4_5": transformers.Ernie4_5ForCausalLM,
            "ernie4_5_moe": transformers.Ernie4_5_MoeForCausalLM}[config.model_type]


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE of VOCAB_SIZE tokens trained on CORPUS, with a ChatML template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_on_successors(model: torch.nn.Module, steps: int, seed: int, batch: int = 16, length: int = 32) -> float:
    """Train `model` (fp32) to predict each token's successor under a permutation of the ordinary
    tokens (the special ids 0-2 never occur); returns the last loss."""
    generator = torch.Generator().manual_seed(seed + 1)
    successor = torch.arange(VOCAB_SIZE)
    first = len(SPECIAL_TOKENS)
    successor[first:] = first + torch.randperm(VOCAB_SIZE - first, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for _ in range(steps):
            tokens = [torch.randint(first, VOCAB_SIZE, (batch,), generator=generator)]
            for _ in range(length - 1):
                tokens.append(successor[tokens[-1]])
            ids = torch.stack(tokens, dim=1)
            loss = model(ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return float(loss)


@torch.no_grad()
def make(family: str, out_dir: str | Path, tier: str = "cpu", seed: int = 0,
         dtype: torch.dtype = torch.bfloat16, train_steps: int = 0) -> Path:
    """Write a random-weight HF checkpoint (config, safetensors, tokenizer), trained for
    `train_steps` on the successor corpus, and return its dir."""
    config = make_config(family, tier)
    tokenizer = make_tokenizer()
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = model_class(config)(config)
    keep_fp32 = ("mlp.gate.weight", "e_score_correction_bias")  # as in the released checkpoints
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):  # RMSNorm weights start at 1: move them so they matter
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif "e_score_correction_bias" in name:  # Ernie-MoE: nonzero, so that it changes selection
            p.copy_(0.01 * torch.randn_like(p))
        elif p.dim() >= 2:
            p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5)  # unit-ish activations through every layer
    if train_steps:
        model.train()
        train_on_successors(model, train_steps, seed)
        model.eval()
    model.to(dtype)
    for name, p in model.named_parameters():
        if name.endswith(keep_fp32):
            p.data = p.data.float()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    both_rope_spellings(out / "config.json", FAMILY_VALUES[family]["rope_theta"])
    return out


def both_rope_spellings(config_json: Path, theta: float) -> None:
    """transformers 5.x writes theta under `rope_parameters` only, where 4.57 reads the top-level
    `rope_theta` (and falls back to 1e4 without it): a file with both loads alike in either."""
    config = json.loads(config_json.read_text())
    config["rope_theta"] = theta
    config.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": theta})
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=FAMILIES)
    parser.add_argument("out_dir")
    parser.add_argument("--tier", choices=tuple(TIERS), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=0, help="train on the successor corpus (0: random)")
    args = parser.parse_args()
    print(make(args.family, args.out_dir, args.tier, args.seed, train_steps=args.train_steps))


if __name__ == "__main__":
    main()
