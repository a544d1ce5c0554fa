"""Import the feature files of earlier versions (`features/<model_id>/originals.npz`, `uploads.npz`) once.

Those versions kept each engine's vectors in two `.npz` files holding the matrix, the filenames, each
file's stamp (size, mtime_ns), the model id and a format version. A vector is imported when its image
has a catalogue row with the same stamp, so nothing is recomputed; the rest is left for the feature job.
Each file is imported in one transaction and then renamed to `*.npz.imported`, so it is read only once
and can be deleted by hand.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from .catalogue import Catalogue

log = logging.getLogger(__name__)

LEGACY_FORMAT_VERSION = 1
LEGACY_SETS = ("originals.npz", "uploads.npz")
IMPORTED_SUFFIX = ".imported"


def import_legacy_feature_files(catalogue: Catalogue, features_dir: Path) -> int:
    """Import every legacy feature file under `features_dir`; returns how many vectors were imported.

    Run it before any engine's vectors are loaded into memory: it writes the catalogue only.
    """
    imported = 0
    for path in sorted(Path(features_dir).glob("*/*.npz")):
        if path.name not in LEGACY_SETS:
            continue
        try:
            with np.load(path, allow_pickle=False) as saved:
                model_id = str(saved["model_id"])
                matrix = np.asarray(saved["features"], np.float32)
                names = [str(name) for name in saved["filenames"]]
                stamps = [tuple(int(v) for v in stamp) for stamp in saved["stamps"]]
                version = int(saved["version"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("Not importing the unreadable feature file %s: %s", path, exc)
            continue
        if version != LEGACY_FORMAT_VERSION or matrix.ndim != 2 or not len(matrix) == len(names) == len(stamps):
            log.warning("Not importing %s: not a feature file this version knows", path)
            continue
        rows = [i for i, (name, stamp) in enumerate(zip(names, stamps))
                if (record := catalogue.get(name)) is not None and record.stamp == stamp]
        with catalogue.write() as write:
            write.put_vectors(model_id, [names[i] for i in rows], matrix[rows], [stamps[i] for i in rows])
        path.rename(path.with_name(path.name + IMPORTED_SUFFIX))
        log.info("Imported %d of %d %s vectors from %s", len(rows), len(names), model_id, path)
        imported += len(rows)
    return imported
