"""Train your own model: a small classifier head on a frozen network's features, saved as a `custom:<path>` model.

What `python -m imgsearch train DATASET --out MODEL.keras` does:
1. The base engine's features of every image go through the sync loop into a cached catalogue of the dataset
   (`evaluate.dataset_features`), so a second run, or `evaluate` on the same folder, extracts nothing again.
2. Each class is split with a fixed seed: held-out images that training never sees, validation images that
   decide when to stop, and the rest to fit on.
3. The head learns the classes from the L2-normalised features: a 256-d ReLU `embedding` layer, dropout 0.5,
   then softmax over the classes, trained with label smoothing 0.1 until the validation loss has not improved
   for 10 epochs; the best epoch's weights are kept.
4. The saved model takes raw 0-255 RGB pixels: the base network with its own input normalisation, the
   normalisation of its features, then the head. `custom:<path>` searches with its `embedding` layer, and the
   `imgsearch.json` member of the archive tells it the class names and to prepare images as the base engine
   does, so the vectors it serves are the ones the head was trained on.
5. On the held-out images it reports classification accuracy, and leave-one-out retrieval (P@10, mAP) with
   the base engine's own features against the trained embedding.

The head's shape and loss were picked on Corel-1k and Caltech-101 (BENCHMARKS.md, "Train your own model").
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .config import Settings
from .engines import get_engine
from .engines.base import Engine
from .engines.custom import CENTRE_CROP, MODEL_INFO
from .evaluate import dataset_features, leave_one_out_metrics, read_labelled_folder
from .extraction import extract_files
from .persist import atomic_write_bytes
from .sync import SyncProgress

MODEL_SUFFIX = ".keras"
EMBEDDING_LAYER = "embedding"
CLASSES_LAYER = "classes"
DROPOUT = 0.5
LABEL_SMOOTHING = 0.1
LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-4
# A smaller fall of the watched loss does not count as an improvement: without it, the loss of well-separated
# classes kept creeping down by 1e-4 an epoch until the last epoch.
MIN_IMPROVEMENT = 1e-3
# Networks whose features `build_model` can rebuild as Keras layers in front of the head.
TRAINABLE_BASES = ("efficientnet-lite0",)
# Settings of feature variants the saved model does not rebuild: a base engine runs with their defaults.
PLAIN_VARIANT = ("feature_pooling", "feature_scales", "flip_average")

EpochProgress = Callable[[int, dict], None]  # (epochs done, that epoch's loss and accuracy figures)


class TrainingError(ValueError):
    """The dataset or the options cannot give a model; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    holdout: float = 0.2        # share of each class kept out of training, for the before/after comparison
    validation: float = 0.2     # share of the rest of each class that decides when to stop
    embedding_dim: int = 256
    max_epochs: int = 200
    patience: int = 10          # epochs without a better validation loss before stopping
    batch_size: int = 32
    seed: int = 0
    fine_tune: int = 0          # top blocks of the base network trained after the head (0: the network stays frozen)


@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices of one dataset, per use."""

    fit: np.ndarray
    validation: np.ndarray
    held_out: np.ndarray


@dataclasses.dataclass
class TrainedHead:
    model: object               # keras.Model: normalised base features -> class probabilities
    epochs: int                 # epochs run
    best_epoch: int             # the epoch whose weights were kept (1-based)
    validation_accuracy: float | None
    seconds: float

    def embed(self, features: np.ndarray) -> np.ndarray:
        """(n, base dim) normalised base features -> (n, embedding dim) embedding, as the saved model computes it."""
        import keras

        embedder = keras.Model(self.model.inputs, self.model.get_layer(EMBEDDING_LAYER).output)
        return np.asarray(embedder.predict(features, batch_size=512, verbose=0), np.float32)

    def accuracy(self, features: np.ndarray, targets: np.ndarray) -> float:
        predicted = self.model.predict(features, batch_size=512, verbose=0).argmax(axis=1)
        return float((predicted == targets).mean())


def check_classes(labels: Sequence[str]) -> list[str]:
    """The class names, sorted; refuses fewer than two classes, or a class with fewer than two images."""
    counts = collections.Counter(labels)
    if len(counts) < 2:
        raise TrainingError(f"training needs at least 2 classes; found {len(counts)}"
                            + (f" ({next(iter(counts))})" if counts else ""))
    small = sorted(name for name, count in counts.items() if count < 2)
    if small:
        raise TrainingError(f"every class needs at least 2 readable images (one to train on, one to check "
                            f"against); these have 1: {', '.join(small)}")
    return sorted(counts)


def split_classes(labels: Sequence[str], holdout: float, validation: float, seed: int = 0) -> Split:
    """Per class, with a seeded shuffle: `holdout` of its images held out (at least one when above 0), then
    `validation` of the rest for validation; at least one image of every class is left to fit on."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"fit": [], "validation": [], "held_out": []}
    for name in sorted(set(labels.tolist())):
        members = rng.permutation(np.flatnonzero(labels == name))
        held = min(max(1, round(len(members) * holdout)), len(members) - 1) if holdout > 0 else 0
        rest = len(members) - held
        checked = min(round(rest * validation), rest - 1)
        parts["held_out"] += members[:held].tolist()
        parts["validation"] += members[held:held + checked].tolist()
        parts["fit"] += members[held + checked:].tolist()
    return Split(**{part: np.sort(np.asarray(rows, np.int64)) for part, rows in parts.items()})


def train_head(features: np.ndarray, targets: np.ndarray, class_count: int, split: Split,
               options: TrainingOptions = TrainingOptions(), progress: EpochProgress | None = None) -> TrainedHead:
    """Fit the head on `features[split.fit]` (L2-normalised base features) to `targets` (class indices).

    Early stopping watches the validation loss; with no validation images (every class too small) it
    watches the training loss.
    """
    from .engines.runtime import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(options.seed)
    inputs = keras.Input((features.shape[1],), name="base_features")
    head = keras.Model(inputs, head_layers(inputs, class_count, options.embedding_dim), name="head")
    return _fit(head, features, targets, split, options, LEARNING_RATE, progress)


def _fit(model, inputs: np.ndarray, targets: np.ndarray, split: Split, options: TrainingOptions,
         learning_rate: float, progress: EpochProgress | None) -> TrainedHead:
    """Adam with label smoothing until the validation loss (else the training loss) stops improving."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING), metrics=["accuracy"])
    one_hot = keras.utils.to_categorical(targets, model.output_shape[-1])
    validate = len(split.validation) > 0
    watched = "val_loss" if validate else "loss"
    stopper = keras.callbacks.EarlyStopping(monitor=watched, patience=options.patience, min_delta=MIN_IMPROVEMENT,
                                            restore_best_weights=True)
    callbacks = [stopper]
    if progress:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: progress(epoch + 1, logs)))
    began = time.perf_counter()
    history = model.fit(inputs[split.fit], one_hot[split.fit], batch_size=options.batch_size,
                        epochs=options.max_epochs, verbose=0, callbacks=callbacks,
                        validation_data=(inputs[split.validation], one_hot[split.validation]) if validate else None)
    seconds = time.perf_counter() - began
    best = stopper.best_epoch  # 0-based; its weights are the ones kept
    accuracy = float(history.history["val_accuracy"][best]) if validate else None
    return TrainedHead(model, len(history.history[watched]), best + 1, accuracy, seconds)


def head_layers(features, class_count: int, embedding_dim: int):
    """features -> the `embedding` layer (ReLU) -> dropout -> softmax over the classes (the `classes` layer)."""
    import keras

    x = keras.layers.Dense(embedding_dim, activation="relu", name=EMBEDDING_LAYER)(features)
    x = keras.layers.Dropout(DROPOUT, name="embedding_dropout")(x)
    return keras.layers.Dense(class_count, activation="softmax", name=CLASSES_LAYER)(x)


def retrieval_comparison(base_vectors: np.ndarray, embedded: dict[str, np.ndarray],
                         labels: Sequence[str]) -> dict | None:
    """Leave-one-out P@10 and mAP by cosine of the same images, with the base features (`base`) and with each
    embedding in `embedded`; None when no class has two of these images."""
    if max(collections.Counter(labels).values(), default=0) < 2:
        return None
    comparison = {}
    for name, vectors in {"base": base_vectors, **embedded}.items():
        figures = leave_one_out_metrics(vectors, labels, ks=(10,), metric="cosine")
        comparison[name] = {"P@10": figures["P@10"], "mAP": figures["mAP"]}
    comparison["queries"] = figures["queries"]
    return comparison


# ----- the saved model -------------------------------------------------------------------------


def build_model(base: Engine, head: TrainedHead, backbone):
    """Raw 0-255 RGB pixels -> class probabilities: `backbone` behind the base engine's input normalisation, its
    features L2-normalised, then the head's layers with the head's weights."""
    import keras

    from .engines.efficientnet_lite import INPUT_TRANSFORM

    pixels = keras.Input((base.input_size, base.input_size, 3), name="pixels")
    mean, = set(INPUT_TRANSFORM.mean)  # the same for every channel
    normalised = keras.layers.Rescaling(INPUT_TRANSFORM.scale, offset=-mean * INPUT_TRANSFORM.scale,
                                        name="normalise")(pixels)
    features = keras.layers.UnitNormalization(name="base_features")(backbone(normalised))
    outputs = head_layers(features, head.model.get_layer(CLASSES_LAYER).units,
                          head.model.get_layer(EMBEDDING_LAYER).units)
    model = keras.Model(pixels, outputs, name="trained_classifier")
    for layer in (EMBEDDING_LAYER, CLASSES_LAYER):
        model.get_layer(layer).set_weights(head.model.get_layer(layer).get_weights())
    return model


def base_backbone(base: Engine):
    """The base engine's network as Keras layers with its weights: (x - 127) / 128 images -> pooled features."""
    from .engines.efficientnet_lite import assign_weights, build_backbone

    layers = base._converted_weights()
    # Named as the engine names it ("efficientnet_lite0"): saved models carry that layer name.
    backbone = build_backbone(layers, base.input_size, name=base.variant.replace("-", "_"))
    assign_weights(backbone, layers)
    return backbone


# ----- fine-tuning the top blocks ------------------------------------------------------------------


def block_count(base: Engine) -> int:
    """How many blocks the base network has, read from its checkpoint (16 for Lite0)."""
    from .engines.efficientnet_lite import block_specs

    return len(block_specs(base._converted_weights()))


def _first_tuned(backbone, blocks: int):
    """The tensor the top `blocks` blocks start from: the input of the first one's first layer."""
    first = sum(layer.name.endswith("_dw_conv") for layer in backbone.layers) - blocks  # one per block
    return next(layer for layer in backbone.layers if layer.name.startswith(f"block{first}_")).input


def block_activations(base: Engine, backbone, blocks: int, dataset: Path, names: Sequence[str], batch_size: int,
                      progress: SyncProgress | None = None) -> np.ndarray:
    """(n, h, w, c) float32: what the frozen part of `backbone` gives each image, where the top `blocks` begin.

    The images go through the same batched extraction as the features, prepared as the base engine prepares them.
    """
    import keras

    lower = keras.Model(backbone.inputs, _first_tuned(backbone, blocks), name="frozen_blocks")
    engine = _Activations(base, lower)
    rows = []
    done = 0
    for batch in extract_files(engine, names, lambda name: Path(dataset) / name, batch_size):
        if batch.failures:
            name, reason = batch.failures[0]
            raise TrainingError(f"{name} could no longer be read: {reason}")
        rows.append(batch.vectors)
        done += len(batch.names)
        if progress:
            progress(done, len(names), None, None)
    return np.concatenate(rows).reshape((len(names), *lower.output.shape[1:]))


class _Activations(Engine):
    """The frozen lower blocks of a backbone as an engine, so the batched extraction can run them."""

    name = "frozen-blocks"
    metric = "euclidean"  # raw activations: extract L2-normalises only cosine vectors

    def __init__(self, base: Engine, lower):
        super().__init__()
        self.input_size = base.input_size
        self.dim = int(np.prod(lower.output.shape[1:]))
        self.prepare = base.prepare
        self._lower = lower

    def _load(self) -> None:
        pass

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        from .engines.efficientnet_lite import INPUT_TRANSFORM

        return self._lower.predict(INPUT_TRANSFORM.apply(batch), verbose=0)


def fine_tune(backbone, blocks: int, activations: np.ndarray, targets: np.ndarray, split: Split,
              head: TrainedHead, options: TrainingOptions = TrainingOptions(),
              progress: EpochProgress | None = None) -> TrainedHead:
    """Train the top `blocks` blocks of `backbone` (in place; batch norms stay as they are) together with a copy of
    the trained head, on `activations` where those blocks begin, at a tenth of the head's learning rate."""
    import keras

    upper = keras.Model(_first_tuned(backbone, blocks), backbone.output, name="tuned_blocks")
    for layer in upper.layers:
        # Batch statistics of a few hundred images would move the normalisation the rest was trained with.
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input(activations.shape[1:], name="activations")
    features = keras.layers.UnitNormalization(name="base_features")(upper(inputs, training=False))
    model = keras.Model(inputs, head_layers(features, head.model.get_layer(CLASSES_LAYER).units,
                                            head.model.get_layer(EMBEDDING_LAYER).units), name="fine_tuned")
    for layer in (EMBEDDING_LAYER, CLASSES_LAYER):
        model.get_layer(layer).set_weights(head.model.get_layer(layer).get_weights())
    return _fit(model, activations, targets, split, options, FINE_TUNE_LEARNING_RATE, progress)


def save_model(model, path: Path, info: dict) -> None:
    """Write the model as a .keras archive carrying `info` as its imgsearch.json, all-or-nothing."""
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / f"model{MODEL_SUFFIX}"
        model.save(saved)
        archive = io.BytesIO(saved.read_bytes())
    with zipfile.ZipFile(archive, "a") as members:
        members.writestr(MODEL_INFO, json.dumps(info, indent=2))
    atomic_write_bytes(path, archive.getvalue())


def model_info(classes: Sequence[str], base: Engine, report: dict) -> dict:
    """What the custom engine needs to know (classes, preparation) and what the run measured."""
    return {"classes": list(classes), "base": base.name, "base_model_id": base.model_id, "prepare": CENTRE_CROP,
            "feature_layer": EMBEDDING_LAYER, "training": report}


# ----- one run, as `train` does it ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelledFeatures:
    """The readable images of a labelled folder with the base engine's (L2-normalised) vectors."""

    dataset: Path
    names: list[str]                # relative to `dataset`, in row order
    labels: np.ndarray
    vectors: np.ndarray
    skipped: list[tuple[str, str]]  # (name, reason) of images that could not be read
    seconds: float                  # extraction time of this call (near 0 when everything was cached)
    extraction: dict                # the cached catalogue's record of the run that computed the vectors


class Progress(Protocol):
    """How a run shows what it is doing: bars for its stages, and lines of text."""

    def images(self, stage: str) -> SyncProgress: ...

    def epochs(self, stage: str, most: int) -> EpochProgress: ...

    def say(self, text: str) -> None: ...


class Quiet:
    """Progress that shows nothing."""

    def images(self, stage: str) -> SyncProgress:
        return lambda done, total, name, reason: None

    def epochs(self, stage: str, most: int) -> EpochProgress:
        return lambda epoch, figures: None

    def say(self, text: str) -> None:
        pass


def base_engine(name: str, settings: Settings) -> Engine:
    """The engine `name` in its plain variant (average pooling, one scale, no mirror), as `build_model` rebuilds it."""
    if name not in TRAINABLE_BASES:
        raise TrainingError(f"train builds on {', '.join(TRAINABLE_BASES)}, not {name}")
    defaults = {field.name: field.default for field in dataclasses.fields(Settings)}
    plain = dataclasses.replace(settings, model=name, **{option: defaults[option] for option in PLAIN_VARIANT})
    return get_engine(name, plain)


def labelled_features(dataset: Path, base: Engine, cache_dir: Path | None, batch_size: int = 32,
                      progress: SyncProgress | None = None) -> LabelledFeatures:
    """Read a labelled folder (class subfolders or labels.csv) and extract its features through the sync loop,
    cached in `cache_dir`; unreadable images are left out and listed. Refuses too few classes or images."""
    dataset = Path(dataset)
    paths, labels = read_labelled_folder(dataset)
    check_classes(labels)
    began = time.perf_counter()
    vectors, extraction = dataset_features(base, dataset, paths, cache_dir, batch_size, progress=progress,
                                           skip_unreadable=True)
    skipped = {name for name, _ in extraction["skipped"]}
    rows = [(name, label) for name, label in zip((Path(p).relative_to(dataset).as_posix() for p in paths), labels)
            if name not in skipped]
    return LabelledFeatures(dataset, [name for name, _ in rows], np.asarray([label for _, label in rows]), vectors,
                            extraction["skipped"], time.perf_counter() - began, extraction)


def train(data: LabelledFeatures, out: Path, base: Engine, options: TrainingOptions = TrainingOptions(), *,
          overwrite: bool = False, batch_size: int = 32, progress: Progress = Quiet()) -> dict:
    """Split, train (and fine-tune), compare on the held-out images, and save the model to `out`.

    Returns what was measured, which the model also records.
    """
    check_output(out, overwrite)
    if not 0 <= options.fine_tune <= block_count(base):
        raise TrainingError(f"{base.name} has {block_count(base)} blocks to fine-tune, not {options.fine_tune}")
    classes = check_classes(data.labels.tolist())
    targets = np.searchsorted(classes, data.labels)
    split = split_classes(data.labels, options.holdout, options.validation, options.seed)
    progress.say(f"training a {options.embedding_dim}-d embedding on {base.model_id} features: {len(split.fit)} "
                 f"images of {len(classes)} classes to fit on, {len(split.validation)} for validation, "
                 f"{len(split.held_out)} held out")
    head = train_head(data.vectors, targets, len(classes), split, options,
                      progress.epochs("training the head", options.max_epochs))
    backbone = base_backbone(base)
    stages = {"head": (head, data.vectors)}
    if options.fine_tune:
        activations = block_activations(base, backbone, options.fine_tune, data.dataset, data.names, batch_size,
                                        progress.images(f"blocks below the top {options.fine_tune}"))
        tuned = fine_tune(backbone, options.fine_tune, activations, targets, split, head, options,
                          progress.epochs(f"fine-tuning the top {options.fine_tune} blocks", options.max_epochs))
        stages["fine-tuned"] = (tuned, activations)
    held = split.held_out
    final, inputs = list(stages.values())[-1]
    report = {
        "dataset": data.dataset.name, "images": len(data.labels), "classes": len(classes),
        "skipped": len(data.skipped), "fit": len(split.fit), "validation": len(split.validation),
        "held_out": len(held),
        "stages": {stage: {"epochs": trained.epochs, "best_epoch": trained.best_epoch,
                           "validation_accuracy": trained.validation_accuracy,
                           "held_out_accuracy": trained.accuracy(stage_inputs[held], targets[held]) if len(held)
                           else None, "seconds": round(trained.seconds, 1)}
                   for stage, (trained, stage_inputs) in stages.items()},
        "retrieval": retrieval_comparison(data.vectors[held], {stage: trained.embed(stage_inputs[held])
                                                               for stage, (trained, stage_inputs) in stages.items()},
                                          data.labels[held].tolist()) if len(held) else None,
        "feature_seconds": round(data.seconds, 1),
        "options": dataclasses.asdict(options),
    }
    model = build_model(base, final, backbone)
    check_output(out, overwrite)
    save_model(model, out, model_info(classes, base, report))
    return report


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output name Keras cannot save to, or an existing file without `overwrite`."""
    if Path(out).suffix != MODEL_SUFFIX:
        raise TrainingError(f"the model is saved in Keras's format: give --out a name ending in {MODEL_SUFFIX}")
    if Path(out).exists() and not overwrite:
        raise TrainingError(f"{out} already exists; pass --overwrite to replace it")
