"""`Preset`: a published model's config, the source of its numbers, and the family it is in."""

from __future__ import annotations

from dataclasses import dataclass

from lmref.spec.config import ModelConfig


@dataclass(frozen=True)
class Preset:
    config: ModelConfig  # the real, published size (its hf_model_type names its transformers class)
    source: str  # the paper or published config its numbers come from
    family: str  # the family module that registers it (`--arch FAMILY` selects all of them)

    @property
    def name(self) -> str:
        return self.config.name


def family(name: str, *presets: tuple[ModelConfig, str]) -> dict[str, Preset]:
    """A family module's registry: {preset id: Preset} from (config, source) pairs."""
    return {config.name: Preset(config, source, name) for config, source in presets}
