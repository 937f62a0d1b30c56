"""The provable built-in models by name: the seeded random ones (checkpoint.py) and SmolLM2
imported into the provable layout (importer.py), each made on first use in
`$P2PINFER_HOME/models/<name>`.

The imported built-ins derive their owner blinding key from their name, in public: every
machine that imports them writes the same manifest bytes, so peers of a network agree on its
digest without sharing a directory. A public key hides nothing, which costs nothing here (the
weights are public); a model owner with private weights imports with a secret key instead
(`p2pinfer zk import --owner-key`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from p2pinfer.models.defaults import (
    SMOLLM2_ZK,
    SMOLLM2_ZK_BLOCK0,
    STAMP_FILE,
    smollm2_path,
    write_once,
)

from .checkpoint import builtin_model_path as _random_builtin_path
from .importer import SMOLLM2_MLP_SHIFTS, import_checkpoint

#: imported built-ins: name -> decoder blocks (None: all)
IMPORTED = {SMOLLM2_ZK: None, SMOLLM2_ZK_BLOCK0: 1}
_FORMAT_VERSION = 3  # of the imported built-ins' directories (their stamp file)


def public_owner_key(name: str) -> bytes:
    """The imported built-in's owner blinding key: public, a function of its name."""
    return hashlib.sha256(b"p2pinfer-zk-v1/public-owner-key/" + name.encode()).digest()


def builtin_model_path(name: str, home: Path | None = None) -> Path:
    """Directory of a built-in model: an imported provable one (IMPORTED) imported and committed
    on first use, any other as p2pinfer.zk.checkpoint.builtin_model_path makes it."""
    if name not in IMPORTED:
        return _random_builtin_path(name, home)

    def write(work: Path) -> None:
        source = smollm2_path()  # ModelError naming the package when it is not installed
        import_checkpoint(source, work, blocks=IMPORTED[name], model_id=name,
                          blinding_key=public_owner_key(name), mlp_shifts=SMOLLM2_MLP_SHIFTS)
        (work / STAMP_FILE).write_text(json.dumps(
            {"format_version": _FORMAT_VERSION, "name": name, "random_weights": False,
             "source": source.name, "public_owner_key": True}) + "\n")

    return write_once(name, home, _FORMAT_VERSION, write)
