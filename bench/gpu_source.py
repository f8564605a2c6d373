"""MiniLM's source folder for a machine without the weights package (the lent GPU machine).

`export DIR` (here) writes the tensor names, shapes and dtypes plus tokenizer.json, a few
hundred KB; `random DIR OUT` (there) writes a model.safetensors of the same shapes with
random weights. Speed depends on shapes, not values, so the GPU numbers hold for the real
weights; nothing measured from such a model is compared for accuracy.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

SPEC = "shapes.json"
TOKENIZER = "tokenizer.json"


def export(target: Path) -> None:
    from workers.models.builders import find_minilm_package_dir

    source = find_minilm_package_dir()
    weights = load_file(str(source / "model.safetensors"))
    target.mkdir(parents=True, exist_ok=True)
    spec = {name: [list(a.shape), str(a.dtype)] for name, a in weights.items()}
    (target / SPEC).write_text(json.dumps(spec))
    shutil.copy(source / TOKENIZER, target / TOKENIZER)


def randomize(spec_dir: Path, out: Path) -> None:
    spec = json.loads((spec_dir / SPEC).read_text())
    rng = np.random.default_rng(0)
    weights = {}
    for name, (shape, dtype) in spec.items():
        if dtype.startswith("int"):
            weights[name] = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
        else:
            weights[name] = (rng.standard_normal(shape) * 0.02).astype(dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"))
    shutil.copy(spec_dir / TOKENIZER, out / TOKENIZER)


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(Path(sys.argv[2]))
    else:
        randomize(Path(sys.argv[2]), Path(sys.argv[3]))
