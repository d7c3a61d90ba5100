"""Do a model's quantized layers see their input only through its per-token int8 codes? Executed
as text ahead of a probe (model_probe.py), after spies.py (whose OpSpy and LaunchSpy it uses); it
imports only torch.

W4A8 quantizes each activation row as x_q = round(x / s), s = absmax(row) / 127, and the GEMM
sees x_q and s alone: two inputs with the same absmax element whose other elements sit within
a quarter step of the same grid points give the same output, bit for bit (the gold ports: 0.0
on every layer of the four families, fused or not). A W4A16 layer (int4 weights, bf16
activations), or one that adds back the rounding error in a second int8 pass, moves with them:
0.9-1.2% rel. L2 on the tiny models.

The test runs on the modules that own the model's integer tensors (the packed weights), each
called again with the arguments it got in one forward but its first floating input replaced:
  on    codes uniform in [-8, 8] times the row's scale (the row's absmax element kept at +-127),
  off   the same with every other element moved by up to a quarter step.
Codes stay small so that a port's own rounding (bf16 division: 0.4% of |q| steps) cannot move
an element across a half step either way. A module called twice on `on` with different results
is not repeatable and left out; so is one whose output ignores a doubling of its input (an
RMSNorm in front of the quantization: its pre-norm input says nothing of the codes), and one
running a floating torch GEMM on its input (a MoE block with its router: the routing weights move
with the input whatever the experts do).

Every module called and repeatable, those left out of the code test included, is also called on
new codes with the Triton launches handed its integer tensors skipped (spies.LaunchSpy): where
its GEMM runs in those launches the output is lost (garbage, zeros or a stale buffer); where it
stays as it was, the GEMM ran in torch beside a launch that was handed the weights and did none
of the work.
"""

import copy
import math
import re

import torch

GRID_JITTER = 0.25  # steps: under the half step that would change a code, with room for bf16 rounding
MOVED_TOL = 1e-3  # rel. L2: a W4A8 layer moves 0.0, a W4A16 one 0.9-1.2% (8x this)
NORM_FIRST_TOL = 1e-2  # rel. L2 between f(2x) and f(x) under which f normalizes its input
PER_ROLE = 2  # modules tested per role (their name with indices as #): layer 0 and 1, expert 0 and 1, ...


def module_tensors(module) -> list[tuple[str, torch.Tensor]]:
    """(attribute, tensor) for each tensor a module holds itself: parameters, buffers, and tensors
    kept in plain attributes, lists or dicts (model_probe.resident_tensors walks a model with it)."""
    items = list(getattr(module, "_parameters", {}).items()) + list(getattr(module, "_buffers", {}).items())
    for attr, value in vars(module).items():
        if isinstance(value, torch.Tensor):
            items.append((attr, value))
        elif isinstance(value, (list, tuple)):
            items += [(f"{attr}[{i}]", v) for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
        elif isinstance(value, dict) and attr not in ("_parameters", "_buffers"):
            items += [(f"{attr}[{k!r}]", v) for k, v in value.items() if isinstance(v, torch.Tensor)]
    return [(attr, t) for attr, t in items if t is not None]


def owned_integer_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The integer tensors a module holds itself."""
    return [t for _, t in module_tensors(module) if not t.dtype.is_floating_point and t.dtype != torch.bool]


def grid_pair(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(on, off) of x's shape and dtype: the same per-token int8 codes, `off` a quarter step off grid."""
    generator = torch.Generator().manual_seed(seed)
    rows = x.detach().float().reshape(-1, x.shape[-1]).cpu()
    scale = rows.abs().amax(-1, keepdim=True).clamp_min(1e-3) / 127
    codes = torch.randint(-8, 9, rows.shape, generator=generator).float()
    top = rows.abs().argmax(-1, keepdim=True)
    codes.scatter_(-1, top, torch.where(rows.gather(-1, top) < 0, -127.0, 127.0))
    jitter = (torch.rand(rows.shape, generator=generator) * 2 - 1) * GRID_JITTER
    jitter.scatter_(-1, top, 0.0)
    on, off = codes * scale, (codes + jitter) * scale
    return tuple(t.to(x.dtype).to(x.device).reshape(x.shape) for t in (on, off))


def _floats(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach().float().reshape(-1).cpu()] if out.dtype.is_floating_point else []
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _floats(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _floats(o)]
    return []


def _apart(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)) or not a:
        return float("inf")
    a, b = torch.cat(a), torch.cat(b)
    apart = float((a - b).norm() / b.norm().clamp_min(1e-30))
    return apart if math.isfinite(apart) else float("inf")  # a skipped kernel's garbage may be NaN


def _floating_gemm_on(calls: list[dict], width: int) -> bool:
    """Did a torch matmul take a floating operand `width` wide? Here the quantized GEMMs run in
    Triton (w4a8_execution fails a torch one first), so such a GEMM is a router's or the like."""
    return any(call["op"] in MATMUL_OPS and any(t["floating"] and t["shape"][-1:] == [width] for t in call["inputs"])
               for call in calls)


def _input_slot(args: tuple, kwargs: dict):
    """Where the module's activation is: the first floating positional tensor of rank >= 2, else a
    keyword of the usual names."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.dtype.is_floating_point and a.dim() >= 2:
            return i
    for key in ("hidden_states", "x", "input", "hidden"):
        if isinstance(kwargs.get(key), torch.Tensor) and kwargs[key].dtype.is_floating_point:
            return key
    return None


@torch.no_grad()
def int8_grid(model: torch.nn.Module, ids: torch.Tensor, min_bytes: int) -> dict:
    """{"tested": [...], "moved": [...], "untested": {module: why}, "bytes": {...}} for the modules
    owning >= min_bytes of integer tensors (one forward of `ids` records their arguments)."""
    owners = {}
    for name, module in model.named_modules():
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in owned_integer_tensors(module)}
        if sum(storages.values()) >= min_bytes:
            owners[name] = (module, storages)
    calls, picked, untested = {}, {}, {}
    for name in owners:  # PER_ROLE of each role: a port may make only some of its layers W4A16
        role = re.sub(r"\.\d+(?=\.|$)", ".#", name)
        picked.setdefault(role, [])
        if len(picked[role]) < PER_ROLE:
            picked[role].append(name)
    chosen = [n for names in picked.values() for n in names]

    def recorder(name):
        def hook(module, args, kwargs):
            if name not in calls:
                try:
                    calls[name] = copy.deepcopy((args, kwargs))
                except Exception:  # an argument that cannot be copied: the call as it is
                    calls[name] = (args, kwargs)
        return hook

    handles = [owners[n][0].register_forward_pre_hook(recorder(n), with_kwargs=True) for n in chosen]
    try:
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    tested, moved, in_triton, in_torch = [], [], [], []
    for name in chosen:
        if name not in calls:
            untested[name] = "not called in a forward (run through another method)"
            continue
        module, (args, kwargs) = owners[name][0], calls[name]
        slot = _input_slot(args, kwargs)
        if slot is None:
            untested[name] = "no floating input"
            continue
        x = args[slot] if isinstance(slot, int) else kwargs[slot]
        on, off = grid_pair(x, seed=len(tested))

        def run(x):
            a, k = copy.deepcopy((args, kwargs))
            if isinstance(slot, int):
                a = a[:slot] + (x,) + a[slot + 1:]
            else:
                k[slot] = x
            return _floats(module(*a, **k))

        try:
            with OpSpy() as ops:  # spies.py, executed ahead of this file
                first = run(on)
            again, shifted = run(on), run(off)
        except Exception as err:  # a module that cannot be called alone is not evidence either way
            untested[name] = f"raised {type(err).__name__} when called alone: {str(err)[:160]}"
            continue
        noise, apart = _apart(again, first), _apart(shifted, first)
        if noise <= MOVED_TOL / 10:
            skipped = _without_its_launches(run, grid_pair(x, seed=1000 + len(tested))[0], owners[name][1])
            if skipped["replays"]:
                untested[f"{name} (launches skipped)"] = "replays a CUDA graph, whose launches cannot be skipped"
            else:
                (in_torch if skipped["apart"] <= MOVED_TOL else in_triton).append({"module": name, **skipped})
        if _floating_gemm_on(ops.calls, x.shape[-1]):
            untested[name] = "runs a floating torch GEMM on its input too (a router?)"
        elif noise > MOVED_TOL / 10:
            untested[name] = f"not repeatable ({noise:.1e} apart on the same input)"
        elif apart > MOVED_TOL and _apart(run(2 * on), first) < NORM_FIRST_TOL:
            untested[name] = "normalizes its input before quantizing"
        else:
            (moved if apart > MOVED_TOL else tested).append({"module": name, "apart": apart})
    total = {p: n for _, storages in owners.values() for p, n in storages.items()}
    checked = {p: n for entry in tested for p, n in owners[entry["module"]][1].items()}
    return {"tested": tested, "moved": moved, "untested": untested, "gemm_in_triton": in_triton,
            "gemm_in_torch": in_torch, "bytes": {"owned": sum(total.values()), "tested": sum(checked.values())}}


def _without_its_launches(run, x: torch.Tensor, storages: dict) -> dict:
    """{"apart", "skipped", "replays"}: how far the module's output on x moves when the Triton
    launches handed its integer tensors do not run (a first call on x, so no buffer holds x's answer
    yet), how many launches that skipped, and how many CUDA graphs it replayed (their kernels run
    unseen). A call that raises without them needed them: apart inf."""
    with LaunchSpy(skip_handed=list(storages.items())) as spy:  # spies.py
        try:
            without = run(x)
        except Exception:
            without = None
    return {"apart": float("inf") if without is None else _apart(without, run(x)),
            "skipped": sum(launch["skipped"] for launch in spy.launches), "replays": spy.replays}
