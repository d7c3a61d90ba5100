"""Checks of a model port against the reference adapter on the task's hidden-seed checkpoint:
`shapes`, `weight_load`, `deterministic_output`, `numerics`, `w4a8_execution`. Each probes the port in the
candidate's sandboxed process (probes/model_probe.py) and the reference in a process of its own,
and turns the comparison into one result whose summary tells an agent what to fix.
"""

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from ..tasks.fixtures import check_seed, fixture_checkpoint
from ..tasks.spec import CheckSpec, TaskSpec
from .probing import (ProbeRun, exception_message, probe_candidate, probe_failure, probe_reference,
                      require_reference)
from .result import CheckResult

# Shape cases (batch, length, left padding of row 0): a decode-like T=1, an odd T, a batch, and
# a padded batch, where position ids and masks go wrong.
DEFAULT_GRID = [[1, 1, 0], [1, 7, 0], [2, 5, 0], [3, 6, 2]]
# A correct port and the reference quantize the same weights and activations the same way; what
# is left is bf16 rounding of activations between layers, which flips a few int8 roundings. On
# the tiny checkpoints that is ~0.3-1% relative L2 of the logits; a missing norm, a wrong rope or
# a wrong pack order is 30-150%.
DEFAULT_RTOL = 0.05
DEFAULT_TOP1 = 0.9
# 32 positions: a hard-coded Llama rope theta (1e4 for Qwen3's 1e6) turns few positions far apart,
# so at 12 positions it sat at 7-12% (rel. L2, three check seeds) against the 5% tolerance; at 32
# it is 21-25% from layer 0 on, while a port dequantizing to bf16 moves only from 1.6% to 1.7-1.8%.
NUMERICS_SHAPE = [2, 32]
NAMES_SHOWN = 6


def _names(names: list[str]) -> str:
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def _args(spec: TaskSpec, check: CheckSpec, module: str, **extra) -> dict:
    if spec.fixture is None:
        raise ValueError(f"check {check.kind} needs the task's fixture: (a tiny checkpoint)")
    model_dir = fixture_checkpoint(spec.fixture, check_seed(), spec.repo_root)
    return {"module": module, "model_dir": str(model_dir), "device": spec.device,
            "use_triton": check.params.get("use_triton", True), **extra}


def _timeout(check: CheckSpec) -> float:
    return check.params.get("timeout_s", 300)


# The reference (when not cached) and a second candidate process run beside the first: the
# checks machine has 2 cores, and agents wait on these checks every round.
_POOL = ThreadPoolExecutor(4, thread_name_prefix="wb-probe")


def _start_reference(spec: TaskSpec, args: dict, timeout_s: float) -> Future:
    return _POOL.submit(probe_reference, spec.repo_root, "model_probe", {**args, "module": spec.reference}, timeout_s)


def _reference(started: Future, spec: TaskSpec, timeout_s: float, op: str) -> ProbeRun:
    return require_reference(started.result(), op, timeout_s, spec.reference)


def _probe_both(spec: TaskSpec, args: dict, tree: Path, timeout: float, name: str,
                op: str) -> tuple[ProbeRun, ProbeRun] | CheckResult:
    """The port's probe and, run beside it, the reference's; a port that fails `op` is the result."""
    started = _start_reference(spec, args, timeout)
    cand = probe_candidate(tree, "model_probe", args, timeout)
    if (problem := probe_failure(name, cand, op, timeout)) is not None:
        return problem
    return cand, _reference(started, spec, timeout, op)


def check_shapes(spec: TaskSpec, check: CheckSpec, tree: Path) -> CheckResult:
    name, timeout = check.name or "shapes", _timeout(check)
    args = _args(spec, check, spec.target, ops=["grid"], grid=check.params.get("grid", DEFAULT_GRID))
    probed = _probe_both(spec, args, tree, timeout, name, "grid")
    if isinstance(probed, CheckResult):
        return probed
    cand, ref = probed
    ref_grid, cand_grid = ref.result["grid"], cand.result["grid"]
    for want, got in zip(ref_grid["cases"], cand_grid["cases"], strict=True):
        case = f"input [B={want['batch']}, T={want['length']}]" + (f" with {want['pad']} left-pad tokens"
                                                                   if want["pad"] else "")
        if "error" in got:
            return CheckResult(name=name, status="fail", category="shape_mismatch",
                               summary=f"{case}: forward raised {exception_message(got['error'])}",
                               details={"traceback_tail": got["error"]})
        if got["logits"] != want["logits"]:
            return CheckResult(name=name, status="fail", category="shape_mismatch",
                               summary=f"{case}: logits {got['logits']}, expected {want['logits']} [B, T, vocab]")
        if got["hidden"] and len(got["hidden"]) == len(want["hidden"]):
            for layer, g, w in zip(ref_grid["layers"], got["hidden"], want["hidden"], strict=True):
                if g != w:
                    return CheckResult(name=name, status="fail", category="shape_mismatch",
                                       summary=f"{case}: hidden state after {layer} is {g}, expected {w}")
    per_layer = "and per-layer hidden states " if cand_grid["layers"] else ""
    note = {} if cand_grid["layers"] else {"note": "no ModuleList of decoder layers found: per-layer shapes not checked"}
    return CheckResult(name=name, status="pass", details=note,
                       summary=f"logits {per_layer}match the reference over {len(ref_grid['cases'])} input shapes")


def check_weight_load(spec: TaskSpec, check: CheckSpec, tree: Path) -> CheckResult:
    name, timeout = check.name or "weight_load", _timeout(check)
    args = _args(spec, check, spec.target, ops=["audit", "perturb"],
                 perturb_shape=check.params.get("perturb_shape", [4, 128]))
    cand = probe_candidate(tree, "model_probe", args, timeout)
    for op in ("audit", "perturb"):
        if (problem := probe_failure(name, cand, op, timeout)) is not None:
            return problem
    audit, dead = cand.result["audit"], cand.result["perturb"]["dead"]
    unread = sorted(set(audit["checkpoint"]) - set(audit["read"]))
    details = {"unread": unread, "dead": dead, "never_loaded": audit["unloaded"], "meta": audit["meta"],
               "raised_when_perturbed": cand.result["perturb"].get("raised", {}),
               "reload_noise": cand.result["perturb"].get("reload_noise")}
    if not audit["read"]:
        return CheckResult(name=name, status="fail", category="unused_weights", details=details,
                           summary="no checkpoint tensor was read through safetensors (safe_open / load_file): "
                                   "load the checkpoint's .safetensors files with the safetensors library")
    if unread:
        return CheckResult(name=name, status="fail", category="unused_weights", details=details,
                           summary=f"{len(unread)} checkpoint tensors are never read: {_names(unread)}")
    if audit["meta"] or audit["unloaded"]:
        missing = audit["meta"] + audit["unloaded"]
        return CheckResult(name=name, status="fail", category="missing_weights", details=details,
                           summary=f"{len(missing)} model tensors are never loaded from the checkpoint (their value "
                                   f"depends on the RNG seed or stays on meta): {_names(missing)}")
    if dead:
        return CheckResult(name=name, status="fail", category="unused_weights", details=details,
                           summary=f"{len(dead)} checkpoint tensors are read but do not change the logits when "
                                   f"perturbed (loaded, then never used): {_names(dead)}")
    return CheckResult(name=name, status="pass", details=details,
                       summary=f"all {len(audit['checkpoint'])} checkpoint tensors are read and each one moves the "
                               "logits; no model tensor is left unloaded")


# A left-padded batch (rows 0, 2 and 3 tokens shorter) against each prompt alone: batching changes
# GEMM shapes and fp32 summation order only, so a right port stays within rounding (the gold
# ports: 1.3-1.5% rel. L2 on the tiny models); a port that ignores the mask attends to the pads.
DEFAULT_PADS, PADDED_LENGTH = [0, 2, 3], 8
DEFAULT_PROMPTS_SHAPE, DEFAULT_NEW_TOKENS = [2, 6], 8  # generate's batch and its new tokens
PADDED_RTOL = 0.05
# MoE: a padded row is compared up to its first token where the reference's router has a near-tie
# (relative gap between the k-th and (k+1)-th expert scores, RouterMargins in the probe): there
# two right ports may route differently. Batching moves router logits by about a bf16 ulp (~0.4%
# of a logit, ~1% of an expert score); the tiny Qwen3-MoE gold flipped at a gap under 1e-4.
ROUTER_TIE = 0.02


def _generated(name: str, tokens: torch.Tensor, batch: int, prompt_len: int, new: int, call: str) -> CheckResult | None:
    """A contract violation when `generate` did not return [B, T + new] (the prompt, then the new tokens)."""
    want = [batch, prompt_len + new]
    if tokens.dim() == 2 and list(tokens.shape) == want:
        return None
    only_new = tokens.dim() == 2 and list(tokens.shape) == [batch, new]
    return CheckResult(name=name, status="fail", category="contract_violation", details={"shape": list(tokens.shape)},
                       summary=f"generate({call}) returned {list(tokens.shape)} for prompts [{batch}, {prompt_len}] and "
                               f"max_new_tokens={new}; the contract is [B, T + new] = {want}, the prompt followed by "
                               "the new tokens" + (" (it returned only the new tokens)" if only_new else ""))


def check_deterministic_output(spec: TaskSpec, check: CheckSpec, tree: Path) -> CheckResult:
    name, timeout = check.name or "deterministic_output", _timeout(check)
    batch, prompt_len = check.params.get("prompts_shape", DEFAULT_PROMPTS_SHAPE)
    new = check.params.get("new_tokens", DEFAULT_NEW_TOKENS)
    args = _args(spec, check, spec.target, ops=["generate", "padded"], prompts_shape=[batch, prompt_len],
                 new_tokens=new, pads=check.params.get("pads", DEFAULT_PADS),
                 padded_length=check.params.get("padded_length", PADDED_LENGTH))
    started = _start_reference(spec, {**args, "ops": ["margins", "padded"], "router_margins": True}, timeout)
    second_process = _POOL.submit(probe_candidate, tree, "model_probe", args, timeout)
    runs = []
    for run in (probe_candidate(tree, "model_probe", args, timeout), second_process.result()):
        if (problem := probe_failure(name, run, "generate", timeout)) is not None:
            return problem
        runs.append(run)
    first = runs[0].tensors["first"]
    if (violation := _generated(name, first, batch, prompt_len, new, "prompts")) is not None:
        return violation
    second, alone, other = (runs[0].tensors.get(k) for k in ("second", "alone", "other"))
    later_errors = runs[0].result.get("generate_errors", {})
    fail = dict(name=name, status="fail", category="nondeterministic")
    if "second" in later_errors:
        return CheckResult(**fail, summary="a second identical generate call in one process raised "
                           f"{exception_message(later_errors['second'])} (state kept across calls: a cache?)",
                           details={"traceback_tail": later_errors["second"]})
    if not torch.equal(first, second):
        return CheckResult(**fail, summary="greedy tokens differ between two identical generate calls in one process "
                           "(state kept across calls: a cache, a position counter?)",
                           details={"first": first.tolist(), "second": second.tolist()})
    for call in ("alone", "other"):
        if call in later_errors:
            what = "one prompt after a batch" if call == "alone" else "other prompts of the same shape"
            return CheckResult(**fail, summary=f"generating for {what} raised {exception_message(later_errors[call])}",
                               details={"traceback_tail": later_errors[call]})
    if not torch.equal(first, runs[1].tensors["first"]):
        return CheckResult(**fail, summary="greedy tokens differ between two fresh processes (unseeded randomness, "
                           "uninitialized memory?)", details={"run1": first.tolist(),
                                                               "run2": runs[1].tensors["first"].tolist()})
    ref = _reference(started, spec, timeout, "margins").tensors
    if not torch.equal(first[:, :prompt_len], ref["tokens"][:, :prompt_len]):
        return CheckResult(name=name, status="fail", category="contract_violation",
                           summary="generate's output does not begin with the prompt: the contract is the prompt "
                                   "followed by the new tokens", details={"port": first.tolist()})
    # Alone vs batched changes GEMM shapes (per expert too), so fp32 summation order: compared,
    # like the reference, up to the first near-tie (the gold Qwen3-MoE port failed the exact
    # comparison in one CI run, on a fresh check seed).
    clear = _clear_steps(ref, "", check)
    end = prompt_len + clear[0]
    if not torch.equal(first[:1, :end], alone[:, :end]):
        return CheckResult(**fail, summary="a prompt generates different tokens alone than as row 0 of a batch "
                           "(before any near-tie)", details={"batched": first[:1].tolist(), "alone": alone.tolist()})
    if (diverged := _against_reference(name, first, ref, "", clear, prompt_len, "prompt")) is not None:
        return diverged
    if (violation := _generated(name, other, batch, prompt_len, new, "other prompts")) is not None:
        return violation
    other_clear = _clear_steps(ref, "other_", check)
    if torch.equal(other[:, prompt_len:], first[:, prompt_len:]) and not torch.equal(
            ref["other_tokens"][:, prompt_len:], ref["tokens"][:, prompt_len:]):
        return CheckResult(**fail, summary="other prompts of the same shape got the previous call's new tokens "
                           "(state kept per shape: a cache or buffer not reset?)",
                           details={"first": first.tolist(), "other": other.tolist()})
    if (diverged := _against_reference(name, other, ref, "other_", other_clear, prompt_len, "other prompt")) is not None:
        return diverged
    router_margin = ref.get("router_margin")
    if (padding := _padded_rows(name, runs[0], args["pads"], check, router_margin)) is not None:
        return padding
    compared = sum(clear) + sum(other_clear)
    positions = _padded_positions(args["pads"], args["padded_length"], router_margin, check)
    padded_all = sum(args["padded_length"] - pad for pad in args["pads"])
    return CheckResult(name=name, status="pass", details={"compared_tokens": compared, "of": 2 * batch * new,
                                                          "padded_positions": sum(positions), "padded_of": padded_all},
                       summary="greedy tokens are identical across calls, processes and batching, match the reference "
                               f"on {compared} of {2 * batch * new} new tokens (two prompt batches, up to any "
                               f"near-tie), and left-padded rows match their prompts alone"
                               + (f" ({sum(positions)} of {padded_all} positions, up to any router near-tie)"
                                  if router_margin is not None else ""))


def _clear_steps(ref: dict, key: str, check: CheckSpec) -> list[int]:
    """Per row, the greedy steps before the reference's first near-tie (later tokens may differ legitimately)."""
    tie = check.params.get("tie_fraction", 0.05) * float(ref[f"{key}logit_std"])
    margins = ref[f"{key}margins"]
    return [_steps_before_tie(margins[row], tie) for row in range(margins.shape[0])]


def _against_reference(name: str, tokens: torch.Tensor, ref: dict, key: str, clear: list[int], prompt_len: int,
                       what: str) -> CheckResult | None:
    want_all = ref[f"{key}tokens"]
    for row, steps in enumerate(clear):
        for step in range(steps):
            got, want = int(tokens[row, prompt_len + step]), int(want_all[row, prompt_len + step])
            if got != want:
                return CheckResult(name=name, status="fail", category="diverges_from_reference",
                                   summary=f"greedy token {step} of {what} {row} is {got}, the reference gives {want} "
                                           f"(clear margin {float(ref[f'{key}margins'][row, step]):.3f})",
                                   details={"port": tokens.tolist(), "reference": want_all.tolist()})
    return None


def _padded_positions(pads: list[int], length: int, router_margin: list | None, check: CheckSpec) -> list[int]:
    """Per padded row, how many of its real positions are compared: all of them, or for a MoE model
    those before the reference's first router near-tie (ROUTER_TIE)."""
    tie = check.params.get("router_tie", ROUTER_TIE)
    if router_margin is None:
        return [length - pad for pad in pads]
    return [_steps_before_tie(margin, tie) for margin in router_margin]


def _padded_rows(name: str, run: ProbeRun, pads: list[int], check: CheckSpec,
                 router_margin: list | None = None) -> CheckResult | None:
    """Each left-padded row's logits (and their argmax) against the same prompt run alone, up to
    any router near-tie of the reference (`_padded_positions`)."""
    if "padded" in run.errors:
        return CheckResult(name=name, status="fail", category="crash", details={"traceback_tail": run.errors["padded"]},
                           summary="a left-padded batch with its attention_mask raised "
                                   f"{exception_message(run.errors['padded'])}")
    rtol = check.params.get("padded_rtol", PADDED_RTOL)
    padded, alone = run.tensors["padded"], run.tensors["unpadded"]
    positions = _padded_positions(pads, padded.shape[1], router_margin, check)
    errors = []
    for row, (pad, n) in enumerate(zip(pads, positions)):
        got, want = padded[row, pad:], alone[row]
        if got.shape != want.shape:
            return CheckResult(name=name, status="fail", category="shape_mismatch",
                               summary=f"left-padded row {row}: logits {list(got.shape)} at its real positions, alone "
                                       f"{list(want.shape)}")
        got, want = got[:n], want[:n]
        errors.append(_relative(got, want) if n else 0.0)
        fail = dict(name=name, status="fail", category="ignores_attention_mask",
                    details={"rel_l2_per_row": [round(e, 5) for e in errors], "pads": pads, "positions": positions})
        if errors[-1] > rtol:
            return CheckResult(**fail, summary=f"row {row} of a left-padded batch ({pad} pad tokens, mask 0 there) "
                                               f"has logits {errors[-1]:.1%} (rel. L2) from the same prompt run "
                                               f"alone (tolerance {rtol:.0%}): the attention mask (or the positions "
                                               "of padded rows) is not honoured")
        if not n:
            continue
        clear = (want.topk(2, dim=-1).values.diff(dim=-1).abs()[..., 0] > 0.05 * float(want.std()))
        flipped = ((got.argmax(-1) != want.argmax(-1)) & clear).nonzero()
        if len(flipped):
            return CheckResult(**fail, summary=f"row {row} of a left-padded batch predicts another token at position "
                                               f"{int(flipped[0, 0])} than the same prompt alone (a clear margin): "
                                               "the attention mask (or the positions of padded rows) is not honoured")
    return None


def _steps_before_tie(margins: torch.Tensor, tie: float) -> int:
    """How many greedy steps come before the first whose top-1 minus top-2 margin is under `tie`."""
    ties = (margins < tie).nonzero()
    return int(ties[0, 0]) if len(ties) else margins.shape[0]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_numerics(spec: TaskSpec, check: CheckSpec, tree: Path) -> CheckResult:
    name, timeout = check.name or "numerics", _timeout(check)
    rtol, top1_min = check.params.get("rtol", DEFAULT_RTOL), check.params.get("top1", DEFAULT_TOP1)
    args = _args(spec, check, spec.target, ops=["logits"], logits_shape=check.params.get("logits_shape", NUMERICS_SHAPE))
    probed = _probe_both(spec, args, tree, timeout, name, "logits")
    if isinstance(probed, CheckResult):
        return probed
    cand, ref = probed
    got, want = cand.tensors["logits"], ref.tensors["logits"]
    if got.shape != want.shape:
        return CheckResult(name=name, status="fail", category="shape_mismatch",
                           summary=f"logits {list(got.shape)}, expected {list(want.shape)} [B, T, vocab]")
    error, top1 = _relative(got, want), float((got.argmax(-1) == want.argmax(-1)).float().mean())
    details = {"rel_l2": round(error, 5), "top1_agreement": round(top1, 4), "rtol": rtol, "top1_min": top1_min}
    if error <= rtol and top1 >= top1_min:
        return CheckResult(name=name, status="pass", details=details,
                           summary=f"logits within {error:.2%} (rel. L2) of the reference, top-1 agreement {top1:.0%}")
    where = "per-layer hidden states not available (no ModuleList of decoder layers found)"
    hidden_got, hidden_want = cand.tensors["hidden"], ref.tensors["hidden"]
    if hidden_got and len(hidden_got) == len(hidden_want):
        errors = [_relative(g, w) if g.shape == w.shape else float("inf") for g, w in zip(hidden_got, hidden_want, strict=True)]
        details["layer_rel_l2"] = [round(e, 5) for e in errors]
        first = next((i for i, e in enumerate(errors) if e > rtol), None)
        layer = ref.result["layers"][first] if first is not None else None
        where = (f"first divergent layer: {layer} (rel. L2 {errors[first]:.1%}; "
                 f"{'the embeddings' if first == 0 else 'layers before it'} match)" if layer else
                 "every decoder layer matches: the final norm or lm_head diverges")
        details["first_divergent_layer"] = layer
    return CheckResult(name=name, status="fail", category="diverges_from_reference", details=details,
                       summary=f"logits differ from the reference by {error:.1%} rel. L2 (tolerance {rtol:.0%}), "
                               f"top-1 agreement {top1:.0%}; {where}")


# Integer storage the port keeps, against the checkpoint's packed int4 bytes (N * K / 2 per layer):
# int8-unpacked weights are 2.0x and dequantized ones 0x; the tiny MoE gold ports hold 1.15-1.22x
# (expert index tables beside the weights), which the tiny models make a large share.
RESIDENT_INT_RANGE = (0.9, 1.5)
MIN_LAUNCHED_SHARE = 0.9  # of the resident integer bytes, handed to Triton launches in one forward


def check_w4a8_execution(spec: TaskSpec, check: CheckSpec, tree: Path) -> CheckResult:
    """With use_triton=True the quantized layers run as W4A8 Triton GEMMs on packed int4 storage:
    no torch op touches a floating tensor of a quantized layer's weight shape (or a fusion of
    siblings), no torch matmul takes one of any dtype, the model keeps about the packed int4 bytes
    as integers, one forward's Triton launches are handed them, and the modules holding them see
    their input only through its per-token int8 codes and lose their output when the launches handed
    their weights are skipped (probes/int8_grid.py)."""
    name, timeout = check.name or "w4a8_execution", _timeout(check)
    args = {**_args(spec, check, spec.target, ops=["execution"]), "use_triton": True}
    cand = probe_candidate(tree, "model_probe", args, timeout)
    if (problem := probe_failure(name, cand, "execution", timeout)) is not None:
        return problem
    seen = cand.result["execution"]
    fail = dict(name=name, status="fail", category="not_w4a8", details=seen)

    def what(op: dict) -> str:
        return f"{op['op']} on a {op['dtype']} {op['shape']} tensor (the weight shape of {_names(op['layers'])})"

    if seen["resident_floating_weights"]:
        first = seen["resident_floating_weights"][0]
        return CheckResult(**fail, summary=f"{first['tensor']} is a {first['dtype']} {first['shape']} tensor: the "
                                           "quantized layers must keep their int4 weights packed, not dequantized")
    if seen["torch_gemms"]:
        return CheckResult(**fail, summary=f"{what(seen['torch_gemms'][0])}: with use_triton=True the quantized "
                                           "layers' GEMMs must run in your Triton kernels, not in torch")
    if seen["dequantized_ops"]:
        return CheckResult(**fail, summary=f"{what(seen['dequantized_ops'][0])}: the int4 weights are dequantized "
                                           "in torch; unpack them inside the Triton GEMM")
    ratio = seen["resident_integer_bytes"] / max(seen["packed_bytes"], 1)
    low, high = RESIDENT_INT_RANGE
    if not low <= ratio <= high:
        return CheckResult(**fail, summary=f"the model keeps {seen['resident_integer_bytes']} bytes of integer tensors "
                                           f"for {seen['layers']} quantized layers whose packed int4 weights are "
                                           f"{seen['packed_bytes']} bytes ({ratio:.2f}x, expected {low}-{high}x): "
                                           "keep the weights as packed int4")
    share = seen["resident_integer_bytes_launched"] / max(seen["resident_integer_bytes"], 1)
    if share < MIN_LAUNCHED_SHARE:
        return CheckResult(**fail, summary=f"one forward's {seen['launches']} Triton launches were handed {share:.0%} "
                                           "of the model's packed weights: every quantized GEMM must run in Triton")
    grid = seen["int8_grid"]
    if grid["gemm_in_torch"]:
        first = grid["gemm_in_torch"][0]
        return CheckResult(**fail, summary=f"{first['module']} gave the same output with the Triton launches handed "
                                           f"its packed weights skipped ({first['skipped']} skipped): its GEMM runs "
                                           "outside Triton (in torch), those launches do none of its work")
    if grid["moved"]:
        worst = max(grid["moved"], key=lambda m: m["apart"])
        return CheckResult(**fail, summary=f"{worst['module']} gave outputs {worst['apart']:.2%} apart (rel. L2) for "
                                           "two inputs with the same per-token int8 codes (s = absmax/127; the other "
                                           "elements up to a quarter step apart): a W4A8 layer sees only the codes, "
                                           "so its activations reach the GEMM in higher precision (W4A16, or the "
                                           "rounding error added back)")
    return CheckResult(name=name, status="pass", details=seen,
                       summary=f"{seen['layers']} quantized layers held as packed int4 ({ratio:.2f}x the checkpoint's "
                               f"bytes), {share:.0%} of them handed to {seen['launches']} Triton launches in one "
                               f"forward, no torch GEMM or dequantized weight; {len(grid['tested'])} modules holding "
                               "them gave the same output for inputs with the same int8 codes, "
                               f"{len(grid['gemm_in_triton'])} lost it without the launches handed their weights")
