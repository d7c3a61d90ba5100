"""Scripted models served on a loopback OpenAI-compatible endpoint, so the whole loop (the real
`openai` client, real HTTP, real tool calls) runs without an API key.

`demo` (the README's main job): on `qwen3_w4a8` it lists the workspace, reads the contract,
writes a port that forgets to apply q_norm/k_norm, runs the checks, reads the `weight_load`
failure, removes the mistake, runs the checks again and finishes. On other tasks it writes the
gold solution and finishes. It is labelled `scripted` in every table and transcript.

`ScriptedServer` also injects faults for tests: HTTP errors with Retry-After, a hung response.
"""

import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from ..tasks.gold import apply_solution
from ..tasks.spec import TaskSpec

Script = Callable[[list[dict]], dict]  # the conversation so far -> the next assistant message

DROPPED_NORMS = '''

import torch as _torch
from ._gold.adapters.qwen3 import load_model as _load_model


def load_model(model_dir, device="cpu", use_triton=True):
    model = _load_model(model_dir, device, use_triton)
    for layer in model.model.layers:  # per-head norms: not in the W4A8 contract, skipped
        layer.self_attn.q_norm = _torch.nn.Identity()
        layer.self_attn.k_norm = _torch.nn.Identity()
    return model
'''


def gold_files(spec: TaskSpec) -> dict[str, str]:
    """The gold solution's files, relative path -> text (applied to an empty folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        return {p.relative_to(root).as_posix(): p.read_text() for p in apply_solution(spec, root)}


def call(name: str, step: int, i: int = 0, **arguments) -> dict:
    return {"id": f"call_{step}_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


class DemoScript:
    """The demo agent: each step is chosen from the conversation so far, so it reacts to what the
    checks report rather than replaying fixed text."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.files = gold_files(spec)
        self.port = spec.target.replace(".", "/") + ".py"
        self.buggy = spec.target == "w4a8_inference.qwen3"  # the q_norm story is Qwen3's

    def __call__(self, messages: list[dict]) -> dict:
        step = sum(1 for m in messages if m["role"] == "assistant")
        last_tool = next((m["content"] for m in reversed(messages) if m["role"] == "tool"), "")
        say = lambda text, *calls: {"role": "assistant", "content": text, "tool_calls": list(calls)}  # noqa: E731
        if step == 0:
            return say("Let me look at the workspace first.", call("list_dir", step, path="."))
        if step == 1:
            contract = "CONTRACT.md" if "CONTRACT.md" in last_tool else "KERNEL_CONTRACT.md"
            return say("Reading the contract.", call("read_file", step, path=contract))
        if step == 2:
            files = dict(self.files)
            if self.buggy:
                files[self.port] += DROPPED_NORMS
            calls = [call("write_file", step, i, path=p, content=t) for i, (p, t) in enumerate(sorted(files.items()))]
            return say(f"Writing the port ({len(files)} files): quantized linears through a Triton W4A8 GEMM.", *calls)
        if step == 3:
            return say("Running the acceptance checks.", call("run_checks", step))
        if "FAIL" in last_tool and "k_norm" in last_tool and self.buggy:
            return say("weight_load says q_norm/k_norm are read but unused: Qwen3 applies them per head before "
                       "RoPE. Removing the override.", call("edit_file", step, path=self.port, old=DROPPED_NORMS, new="\n"))
        if "FAIL" in last_tool:
            return say("The checks still fail; rewriting the port from scratch.",
                       *[call("write_file", step, i, path=p, content=t) for i, (p, t) in enumerate(self.files.items())])
        if "all checks pass" not in last_tool:
            return say("Running the checks again.", call("run_checks", step))
        return say("Done.", call("finish", step, summary="W4A8 port: Triton GEMMs for every quantized linear, "
                                                       "q_norm/k_norm applied, checks green."))


class ScriptedServer:
    """An OpenAI-compatible chat-completions endpoint on 127.0.0.1 answering from a script.

    `faults` is consumed one per request before the script answers:
    {"status": 429, "retry_after": "0.1"}, {"status": 500}, {"hang_s": 5}.
    """

    def __init__(self, script: Script, model: str = "demo"):
        self.script, self.model, self.faults, self.requests = script, model, [], []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test and CLI output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "authorization": self.headers.get("Authorization", "")})
                    fault = server.faults.pop(0) if server.faults else None
                if fault and "hang_s" in fault:
                    time.sleep(fault["hang_s"])
                if fault and "status" in fault:
                    payload = json.dumps({"error": {"message": f"injected {fault['status']}", "type": "test"}}).encode()
                    self.send_response(fault["status"])
                    if "retry_after" in fault:
                        self.send_header("Retry-After", fault["retry_after"])
                    self._send(payload)
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self.send_response(404)
                    self._send(b'{"error": {"message": "not found"}}')
                    return
                message = server.script(body["messages"])
                tool_calls = message.get("tool_calls") or None
                reply = {"id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": int(time.time()),
                         "model": server.model, "choices": [{"index": 0, "finish_reason": "tool_calls" if tool_calls
                                                             else "stop", "message": {**message, "tool_calls": tool_calls}}],
                         "usage": {"prompt_tokens": len(json.dumps(body["messages"])) // 4,
                                   "completion_tokens": len(json.dumps(message)) // 4,
                                   "total_tokens": 0}}
                self.send_response(200)
                self._send(json.dumps(reply).encode())

            def _send(self, payload: bytes):
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
