"""Where model packs live and which one to use (the ``[models]`` table of a config)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from core.tomlconfig import build_section, read_toml

#: default place for model packs; a terminal uses /var/lib/motcua/models via its config
DEFAULT_MODEL_DIR = Path(
    os.environ.get("MOTCUA_MODEL_DIR", Path.home() / ".cache" / "motcua" / "models")
)
#: the model pack used when the config names none: FaceNet fused with dlib's ResNet (640-d,
#: docs/models.md "The fused pack"). It meets issue 11's targets where FaceNet alone
#: ("mtcnn-facenet", still built and selectable) does not, on LFW (docs/recognition.md):
#: 10 folds 0.9907 (FaceNet 0.9880; target >= 0.99), FNIR with confirmation 4.7 % (5.3 %;
#: target <= 5 %), measured FPIR at target 1e-3 0.84e-3 on every split <= 2e-3 (FaceNet
#: 1.53e-3 on the mean, two splits over 2e-3)
DEFAULT_PACK = "mtcnn-facenet-dlib"


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
    """Which model pack to load and where packs are stored."""

    dir: Path = DEFAULT_MODEL_DIR
    pack: str = DEFAULT_PACK




def load_models_settings(path: Path | None) -> ModelsConfig:
    """The ``[models]`` table of a terminal's or district's configuration file."""
    if path is None:
        return ModelsConfig()
    return build_section(ModelsConfig, read_toml(path).get("models", {}), "models")
