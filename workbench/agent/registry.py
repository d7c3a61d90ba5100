"""The model registry: packaged `workbench/models.yaml`, overridden entry by entry by a user
file (`$WB_MODELS_FILE` or `~/.config/porting-workbench/models.yaml`) and per run by
`--base-url` / `--api-key-env`."""

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PACKAGED = Path(__file__).resolve().parent.parent / "models.yaml"


class Prices(BaseModel):
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base_url: str
    model_id: str
    api_key_env: str | None = None
    context_window: int = Field(128_000, gt=0)
    prices: Prices = Prices()
    max_output_tokens: int = Field(16_000, gt=0)
    params: dict[str, Any] = Field(default_factory=dict, description="extra request fields (temperature, ...)")
    token_param: str = Field("max_tokens", description="max_completion_tokens for reasoning models")
    scripted: bool = False

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached_price = self.prices.cached_input if self.prices.cached_input is not None else self.prices.input
        fresh = prompt_tokens - cached_tokens
        return (fresh * self.prices.input + cached_tokens * cached_price
                + completion_tokens * self.prices.output) / 1e6

    @property
    def has_key(self) -> bool:
        return self.api_key_env is None or bool(os.environ.get(self.api_key_env))


class RegistryError(ValueError):
    """A registry file that does not validate, or an unknown model name."""


def _user_file() -> Path:
    return Path(os.environ.get("WB_MODELS_FILE") or Path.home() / ".config/porting-workbench/models.yaml")


def _read(path: Path) -> dict[str, dict]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RegistryError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: a registry maps model names to entries")
    return data


def load_registry() -> dict[str, ModelEntry]:
    raw = _read(PACKAGED)
    user = _user_file()
    if user.exists():
        for name, entry in _read(user).items():
            raw[name] = {**raw.get(name, {}), **(entry or {})}
    models = {}
    for name, entry in raw.items():
        try:
            models[name] = ModelEntry(name=name, **entry)
        except ValidationError as err:
            where = user if user.exists() and name in _read(user) else PACKAGED
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise RegistryError(f"{where}: model {name}: {fields}") from None
    return models


def resolve_model(name: str, base_url: str | None = None, api_key_env: str | None = None) -> ModelEntry:
    """A registry entry by name; with --base-url an unknown name is an ad-hoc entry (model id = name)."""
    models = load_registry()
    if name in models:
        entry = models[name]
    elif base_url:
        entry = ModelEntry(name=name, base_url=base_url, model_id=name)
    else:
        raise RegistryError(f"unknown model {name!r}; known: {', '.join(sorted(models))} "
                            "(or pass --base-url for any OpenAI-compatible endpoint)")
    updates = {k: v for k, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v}
    return entry.model_copy(update=updates)
