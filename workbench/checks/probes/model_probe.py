"""Probe a port (or the reference adapter) inside its own process and write what it observed.

This file is not imported by the harness: its text is executed in the checked process (the
candidate's, where `workbench` itself is unimportable, or the reference's), followed by
`main(ARGS)`. It imports only the standard library, torch and safetensors, and talks back
through files: `<out>/result.json` (shapes, names, tokens) and `<out>/tensors.pt`.

Ops (ARGS["ops"]):
  grid      logits and per-layer hidden shapes over (B, T) cases, a left-padded batch among them
  logits    teacher-forced logits and per-layer hidden states for fixed ids
  generate  greedy tokens for fixed prompts: twice in this process, a prompt alone and inside a
            batch, then other prompts of the same shape
  padded    logits of a left-padded batch and of each of its prompts alone
  margins   top-1 minus top-2 logit at each greedy step of both prompt batches (reference only:
            where ties make tokens unstable)
  audit     which checkpoint tensors were read (at the safetensors level) and which model tensors
            depend on the RNG seed at load time (never loaded)
  perturb   for each checkpoint tensor, does perturbing it on disk move the logits
  execution one forward with use_triton=True watched by the spies (probes/spies.py): torch ops on
            a quantized layer's weight shape, the integer bytes handed to Triton launches, and
            the tensors the model keeps resident, and whether the modules holding the packed
            weights see their input only through its per-token int8 codes (probes/int8_grid.py)
"""

import importlib
import itertools
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import safetensors
import safetensors.torch
import torch

READS: set[str] = set()
_safe_open = safetensors.safe_open


class _RecordingSafeOpen:
    """`safetensors.safe_open` that records the names of the tensors read through it."""

    def __init__(self, *args, **kwargs):
        self._f = _safe_open(*args, **kwargs)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def get_tensor(self, name):
        READS.add(name)
        return self._f.get_tensor(name)

    def get_slice(self, name):
        READS.add(name)
        return self._f.get_slice(name)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _recording_load(data, *args, **kwargs):
    tensors = _load_bytes(data, *args, **kwargs)
    READS.update(tensors)
    return tensors


# Installed before the port (or transformers) is imported, so `from safetensors import safe_open`
# in any module binds the recording version.
safetensors.safe_open = safetensors.torch.safe_open = _RecordingSafeOpen
_load_bytes, safetensors.torch.load = safetensors.torch.load, _recording_load


def logits_of(output) -> torch.Tensor:
    logits = output.logits if hasattr(output, "logits") else output
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"forward returned {type(output).__name__}, not logits [B, T, V] or an object with .logits")
    return logits


class LayerTap:
    """Hidden states after every decoder layer: forward hooks on the first ModuleList with one
    entry per layer (what HF models and hand-written ports alike keep their layers in)."""

    def __init__(self, model: torch.nn.Module, num_layers: int):
        self.outputs: list[torch.Tensor] = []
        self.names: list[str] = []
        layers = next(((n, m) for n, m in model.named_modules()
                       if isinstance(m, torch.nn.ModuleList) and len(m) == num_layers), None)
        if layers is None:
            return
        for i, layer in enumerate(layers[1]):
            self.names.append(f"{layers[0]}.{i}")
            layer.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(hidden, torch.Tensor):
            self.outputs.append(hidden.detach().float().cpu())

    def run(self, model, ids, mask=None):
        self.outputs = []
        logits = logits_of(model(ids, attention_mask=mask) if mask is not None else model(ids))
        return logits.detach().float().cpu(), list(self.outputs)


class RouterMargins:
    """Hooks on a MoE model's MoE blocks (the modules holding a router `mlp.gate`): per token, the
    relative gap between the k-th and (k+1)-th expert scores (softmax of the router logits, plus
    Ernie's e_score_correction_bias where the model has one: what top-k selects on), the minimum over
    layers. Two correct ports may pick different experts where that gap is within rounding: a
    GEMM of another shape (a padded batch against a prompt alone) moves the router logits by a
    bf16 ulp. Measured on the tiny Qwen3-MoE gold port: a gap under 5e-6 at one token flipped an
    expert and put the padded row 11% (rel. L2) from the prompt alone, 24% at that position.

    The logits are computed here from the block's input and the router's weight (as transformers'
    routers compute them, in the weight's dtype), not read from the gate's output: the adapters'
    FusedSparseMoE routes in one Triton kernel that reads `gate.weight` and never calls the gate, so
    a hook on the gate recorded nothing on a GPU and every padded position was compared exactly."""

    def __init__(self, model, config: dict, enabled: bool):
        self.top_k = config.get("num_experts_per_tok") or config.get("moe_k")
        modules = dict(model.named_modules()) if enabled and self.top_k else {}
        # Ernie's bias sits in the gate (transformers 5.x) or beside it in the MoE block (4.57)
        self.routers = [(m, modules[name[:-len(".gate")]]) for name, m in modules.items()
                        if name.endswith("mlp.gate") and isinstance(getattr(m, "weight", None), torch.Tensor)]
        self.found = bool(self.routers)
        self.margins: list[torch.Tensor] = []

    def __enter__(self):
        self.handles = [block.register_forward_pre_hook(self._hook(gate.weight, block), with_kwargs=True)
                        for gate, block in self.routers]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _hook(self, weight: torch.Tensor, block):
        bias = next((t for n, t in list(block.named_buffers()) + list(block.named_parameters())
                     if n.endswith("e_score_correction_bias")), None)

        def hook(module, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"]).detach()
            logits = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]).to(weight.dtype), weight.detach())
            scores = logits.float().softmax(-1)
            if bias is not None:
                scores = scores + bias.detach().float().reshape(-1)
            top = scores.topk(self.top_k + 1, dim=-1).values
            self.margins.append(((top[..., -2] - top[..., -1]) / top[..., -2].abs().clamp_min(1e-12)).cpu())
        return hook

    def take(self, shape) -> torch.Tensor:
        """[B, T] minimum margin over the layers of the forward just run (inf without routers)."""
        margins, self.margins = self.margins, []
        if not margins:
            return torch.full(tuple(shape), float("inf"))
        return torch.stack([m.reshape(shape) for m in margins]).amin(dim=0)


class Probe:
    def __init__(self, args: dict):
        self.args = args
        self.model_dir = Path(args["model_dir"])
        self.config = json.loads((self.model_dir / "config.json").read_text())
        self.device = args.get("device", "cpu")
        self.module = importlib.import_module(args["module"])
        self.vocab = self.config["vocab_size"]

    def load(self, model_dir=None, use_triton=None):
        use_triton = self.args.get("use_triton", True) if use_triton is None else use_triton
        model = self.module.load_model(str(model_dir or self.model_dir), device=self.device, use_triton=use_triton)
        return model.eval() if hasattr(model, "eval") else model

    def warm_up(self) -> None:
        """One forward of a throwaway model before any op. The first forward of a process can round
        differently from every later one: on the tiny Ernie-4.5-MoE gold port, in 2 of 16 fresh
        processes the first call's rotary table (model.rotary_emb, the first module whose output
        differed) came out apart from the second and third calls', which agreed, and an expert
        choice flipped downstream moved the logits by 0.39 (16% of the largest). As `perturb`'s
        reference that can make every perturbed tensor look used or, through the reload noise,
        every tensor look dead (the gold port failed so in CI). After a [1, 8] warm-up forward,
        24 of 24 processes agreed. A port that fails here is left for the ops to report."""
        try:
            self.load()(self.ids(1, 8, seed=0))
        except Exception:
            pass

    def ids(self, batch: int, length: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(3, self.vocab, (batch, length), generator=generator).to(self.device)

    def grid(self, result: dict, tensors: dict) -> None:
        model = self.load()
        tap = LayerTap(model, self.config["num_hidden_layers"])
        cases = []
        for batch, length, pad in self.args["grid"]:
            ids = self.ids(batch, length, seed=batch * 100 + length)
            mask = None
            if pad:  # left padding, as a batched server pads: the first row is `pad` tokens shorter
                mask = torch.ones_like(ids)
                mask[0, :pad] = 0
            case = {"batch": batch, "length": length, "pad": pad}
            try:
                logits, hidden = tap.run(model, ids, mask)
                case.update(logits=list(logits.shape), hidden=[list(h.shape) for h in hidden])
            except Exception as err:  # one shape case failing is a finding, not the end of the probe
                case["error"] = _error_text(err)
            cases.append(case)
        result["grid"] = {"cases": cases, "layers": tap.names}

    def logits(self, result: dict, tensors: dict) -> None:
        model = self.load()
        tap = LayerTap(model, self.config["num_hidden_layers"])
        batch, length = self.args["logits_shape"]
        logits, hidden = tap.run(model, self.ids(batch, length, seed=7))
        tensors["logits"], tensors["hidden"] = logits, hidden
        result["layers"] = tap.names

    def generate(self, result: dict, tensors: dict) -> None:
        """Four calls in order: the batch, the same batch again, its first prompt alone, another
        batch of the same shape. A later call that raises is recorded, not fatal: state leaking
        from an earlier call is the finding."""
        model = self.load()
        prompts = self.ids(*self.args["prompts_shape"], seed=11)
        new = self.args["new_tokens"]
        tensors["first"] = self.module.generate(model, prompts, new).cpu()
        for call, ids in (("second", prompts), ("alone", prompts[:1]), ("other", self.other_prompts())):
            try:
                tensors[call] = self.module.generate(model, ids, new).cpu()
            except Exception as err:
                result.setdefault("generate_errors", {})[call] = _error_text(err)

    def other_prompts(self) -> torch.Tensor:
        """Prompts of the same shape as the first batch, other tokens (seed 12 against 11)."""
        return self.ids(*self.args["prompts_shape"], seed=12)

    def padded(self, result: dict, tensors: dict) -> None:
        """Logits of a left-padded batch (rows `pads` tokens shorter, pad id where the mask is 0)
        and of each row's prompt run alone."""
        model = self.load()
        pads = self.args["pads"]
        ids = self.ids(len(pads), self.args["padded_length"], seed=13)
        mask = torch.ones_like(ids)
        for row, pad in enumerate(pads):
            mask[row, :pad] = 0
            ids[row, :pad] = self.config.get("pad_token_id") or 0
        with RouterMargins(model, self.config, self.args.get("router_margins", False)) as routers:
            tensors["padded"] = logits_of(model(ids, attention_mask=mask)).float().cpu()
            padded_margin = routers.take(ids.shape)
            tensors["unpadded"], alone_margins = [], []
            for row, pad in enumerate(pads):
                tensors["unpadded"].append(logits_of(model(ids[row:row + 1, pad:])).float().cpu()[0])
                alone_margins.append(routers.take(ids[row:row + 1, pad:].shape)[0])
        if routers.found:  # per real position, the closest expert choice of either run, any layer
            tensors["router_margin"] = [torch.minimum(padded_margin[row, pad:], alone)
                                        for row, (pad, alone) in enumerate(zip(pads, alone_margins))]

    def margins(self, result: dict, tensors: dict) -> None:
        """Teacher-forced over the greedy continuations of both prompt batches: the gap between the
        two best logits at each generated step (a near-tie can flip under any valid rounding)."""
        model = self.load()
        for key, prompts in (("", self.ids(*self.args["prompts_shape"], seed=11)), ("other_", self.other_prompts())):
            tokens = self.module.generate(model, prompts, self.args["new_tokens"])
            logits = logits_of(model(tokens)).float().cpu()
            top2 = logits[:, prompts.shape[1] - 1:-1].topk(2, dim=-1).values
            tensors.update({f"{key}tokens": tokens.cpu(), f"{key}margins": top2[..., 0] - top2[..., 1],
                            f"{key}logit_std": logits.std()})

    def audit(self, result: dict, tensors: dict) -> None:
        READS.clear()
        states = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            model = self.load(use_triton=False)
            states.append({n: t.detach().cpu() for n, t in
                           list(model.named_parameters()) + list(model.named_buffers())})
        meta = sorted(n for n, t in states[0].items() if t.is_meta)
        unloaded = sorted(n for n, t in states[0].items() if n not in meta
                          and not torch.equal(t, states[1].get(n, t.new_empty(0))))
        result["audit"] = {"read": sorted(READS), "checkpoint": sorted(checkpoint_names(self.model_dir)),
                           "unloaded": unloaded, "meta": meta}

    def perturb(self, result: dict, tensors: dict) -> None:
        ids = self.ids(*self.args.get("perturb_shape", [4, 128]), seed=5)
        clean = logits_of(self.load(use_triton=False)(ids)).float()
        # A tensor in use, perturbed by twice its magnitude, moves the logits by tens of percent.
        # Two loads of the same checkpoint may differ by rounding noise (a bf16 logit or an int8
        # activation rounding one ulp apart, under another thread split: up to ~0.4% of a logit),
        # which must not make a dead tensor look used.
        reload_noise = (logits_of(self.load(use_triton=False)(ids)).float() - clean).abs().max().item()
        scale = clean.abs().max().item()
        tolerance = max(DEAD_TOLERANCE * scale, 4 * reload_noise)
        dead, raised = [], {}
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "ckpt"
            shutil.copytree(self.model_dir, copy)
            by_shard: dict[str, list[str]] = {}
            for name, shard in checkpoint_names(self.model_dir).items():
                by_shard.setdefault(shard, []).append(name)
            for shard, names in by_shard.items():
                original = safetensors.torch.load_file(str(self.model_dir / shard))
                for name in names:
                    changed = {**original, name: perturbed(original[name])}
                    safetensors.torch.save_file(changed, str(copy / shard), metadata={"format": "pt"})
                    try:
                        moved = logits_of(self.load(copy, use_triton=False)(ids)).float()
                    except Exception as err:  # the port noticed the change (a shape tensor, say): it is used
                        raised[name] = f"{type(err).__name__}: {err}"[:300]
                        continue
                    if moved.shape == clean.shape and (moved - clean).abs().max().item() <= tolerance:
                        dead.append(name)
                shutil.copy(self.model_dir / shard, copy / shard)
        result["perturb"] = {"dead": dead, "raised": raised, "reload_noise": reload_noise / max(scale, 1e-30)}

    def execution(self, result: dict, tensors: dict) -> None:
        layers = quantized_layers(self.model_dir)
        by_shape = weight_shapes(layers)
        model = self.load(use_triton=True)
        # [2, 9]: no activation or attention operand has a weight's shape (no layer has 2, 9 or 18 rows)
        ids = self.ids(2, 9, seed=3)
        spy = OpSpy()
        with spy, LaunchSpy() as launches:
            logits_of(model(ids))
        torch_gemms, dequantized = {}, {}
        for call in spy.calls:
            matmul = call["op"] in MATMUL_OPS
            for t, is_input in [(t, True) for t in call["inputs"]] + [(t, False) for t in call["outputs"]]:
                names = by_shape.get(weight_key(t["shape"]))
                found = torch_gemms if matmul and is_input else dequantized if t["floating"] else None
                if names is not None and found is not None:
                    found.setdefault((call["op"], tuple(t["shape"])), {
                        "op": f"aten.{call['op']}", "shape": t["shape"], "dtype": t["dtype"], "layers": names[:3]})
        launched = [t["start"] for launch in launches.launches for t in launch["tensors"] if not t["floating"]]
        integer_bytes, handed_bytes, floating_weights = 0, 0, []
        for name, t in resident_tensors(model):
            if not t.dtype.is_floating_point and t.dtype != torch.bool:
                storage = t.untyped_storage()
                start, nbytes = storage.data_ptr(), storage.nbytes()
                integer_bytes += nbytes
                handed_bytes += nbytes * any(start <= p < start + nbytes for p in launched)
            elif weight_key(t.shape) in by_shape:
                floating_weights.append({"tensor": name, "shape": list(t.shape), "dtype": str(t.dtype)[6:]})
        result["execution"] = {
            "packed_bytes": sum(n * k // 2 for n, k in layers.values()), "layers": len(layers),
            "torch_gemms": list(torch_gemms.values())[:8], "dequantized_ops": list(dequantized.values())[:8],
            "launches": len(launches.launches), "resident_integer_bytes": integer_bytes,
            "resident_integer_bytes_launched": handed_bytes, "resident_floating_weights": floating_weights[:8],
            "int8_grid": int8_grid(model, ids, min(n * k // 2 for n, k in layers.values()) // 2)}


def weight_key(shape) -> tuple | None:
    """How `weight_shapes` keys a tensor of `shape`: its last two sizes in either order."""
    return tuple(sorted(shape[-2:])) if len(shape) >= 2 else None


def quantized_layers(model_dir: Path) -> dict[str, tuple[int, int]]:
    """Each quantized layer of the checkpoint -> its weight's (N, K), whatever the format: awq
    `qweight` [K, N/8], compressed-tensors `weight_packed` [N, K/8] (with `weight_shape`), or int
    values stored unpacked in an integer `weight` beside a `weight_scale`."""
    layers = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with _safe_open(str(shard), framework="pt") as f:
            keys = set(f.keys())
            for key in keys:
                prefix, _, leaf = key.rpartition(".")
                shape = f.get_slice(key).get_shape()
                if leaf == "qweight":
                    layers[prefix] = (shape[1] * 8, shape[0])
                elif leaf == "weight_packed":
                    size = f.get_tensor(f"{prefix}.weight_shape").tolist() if f"{prefix}.weight_shape" in keys else None
                    layers[prefix] = tuple(size) if size else (shape[0], shape[1] * 8)
                elif leaf == "weight" and f"{prefix}.weight_scale" in keys and "int" in f.get_slice(key).get_dtype().lower():
                    layers[prefix] = (shape[0], shape[1])
    return layers


def weight_shapes(layers: dict[str, tuple[int, int]]) -> dict[tuple, list[str]]:
    """Sorted (rows, cols) -> the layers a floating tensor of that shape could be the weight of:
    each layer's own, and the fusions of siblings with one K (q+k+v, k+v, gate+up)."""
    shapes: dict[tuple, list[str]] = {}
    siblings: dict[tuple, list[str]] = {}
    for prefix, (n, k) in sorted(layers.items()):
        shapes.setdefault(tuple(sorted((n, k))), []).append(prefix)
        siblings.setdefault((prefix.rpartition(".")[0], k), []).append(prefix)
    for (_, k), names in siblings.items():
        for size in range(2, len(names) + 1):
            for group in itertools.combinations(names, size):
                fused = sum(layers[name][0] for name in group)
                shapes.setdefault(tuple(sorted((fused, k))), []).append("+".join(group))
    return shapes


def resident_tensors(model) -> list[tuple[str, torch.Tensor]]:
    """Every tensor reachable from the model's modules (parameters, buffers, and tensors kept in
    plain attributes, lists or dicts), one per storage."""
    found, seen = [], set()
    modules = model.named_modules() if isinstance(model, torch.nn.Module) else [("", model)]
    for module_name, module in modules:
        for attr, t in module_tensors(module):  # int8_grid.py, executed ahead of this file
            if t.is_meta or t.untyped_storage().data_ptr() in seen:
                continue
            seen.add(t.untyped_storage().data_ptr())
            found.append((f"{module_name}.{attr}" if module_name else attr, t))
    return found


DEAD_TOLERANCE = 1e-2  # of the largest logit: below it a perturbed tensor did not move the logits


def perturbed(t: torch.Tensor) -> torch.Tensor:
    """A clearly different value of the same dtype and shape."""
    generator = torch.Generator().manual_seed(0)
    if t.dtype.is_floating_point:
        noise = torch.randn(t.shape, generator=generator) * (t.float().abs().mean() + 1e-2) * 2
        return (t.float() + noise).to(t.dtype)
    info = torch.iinfo(t.dtype)
    return torch.randint(max(info.min, -2**31), min(info.max, 2**31 - 1), t.shape, generator=generator).to(t.dtype)


def checkpoint_names(model_dir: Path) -> dict[str, str]:
    """Every tensor in the checkpoint -> its shard file name."""
    names = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with _safe_open(str(shard), framework="pt") as f:
            names.update({k: shard.name for k in f.keys()})
    return names


def _error_text(err: BaseException) -> str:
    """The last two frames and the head of the message (a load error may list many tensors)."""
    frames = "".join(traceback.format_tb(err.__traceback__)[-2:])
    return (frames + "".join(traceback.format_exception_only(err))[:3000]).strip()


def main(args: dict) -> None:
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    result, tensors, timings = {}, {}, {}
    probe = Probe(args)
    probe.warm_up()
    for op in args["ops"]:
        start = time.perf_counter()
        try:
            getattr(probe, op)(result, tensors)
        except Exception as err:
            result.setdefault("errors", {})[op] = _error_text(err)
        timings[op] = round(time.perf_counter() - start, 3)
    result["seconds"] = timings
    torch.save(tensors, out / "tensors.pt")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    sys.stdout.flush()
