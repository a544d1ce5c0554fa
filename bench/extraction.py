"""Feature extraction from JPEG files on disk, end to end (read, decode, resize, model), ours against the seed's.

Ours: `extraction.extract_files`, what "Generate Features" runs: decoding with JPEG draft mode in a
thread pool overlapped with batched inference (ONNX Runtime by default; TensorFlow is measured beside it). Baseline: per image
`keras.utils.load_img(path, target_size=(224, 224))` and `model.predict` on a batch of one.
The achieved GFLOP/s is compared with the machine's float32 matrix-multiply peak measured in the same run.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from imgsearch.config import Settings
from imgsearch.engines import get_engine
from imgsearch.extraction import extract_files, prepare_file

from . import seed_baseline
from .common import count_macs, repeat_timed, result_row

TARGET_RATE = {"resnet50": 20.0}
TARGET_SPEEDUP = {"resnet50": 3.0}


def _ours(engine, paths: list[Path], batch_size: int, workers: int) -> tuple[float, np.ndarray]:
    by_name = {path.name: path for path in paths}
    start = time.perf_counter()
    batches = list(extract_files(engine, list(by_name), by_name.__getitem__, batch_size, workers))
    seconds = time.perf_counter() - start
    assert sum(len(b.names) for b in batches) == len(paths), "every generated photo must decode"
    return seconds, np.concatenate([b.vectors for b in batches])


def _prepared_batch(engine, paths: list[Path], batch_size: int) -> np.ndarray:
    """`batch_size` decoded inputs, cycling through the photos."""
    return np.stack([prepare_file(engine, path) for path in (paths * batch_size)[:batch_size]])


def _resnet50_pair(option: str, values: tuple[str, str]) -> dict:
    """Two warmed-up ResNet50 engines with the same random weights, differing only in `option`."""
    import keras

    from imgsearch.engines.keras_cnn import KerasApplicationEngine

    engines = {}
    for value in values:
        keras.utils.set_random_seed(0)
        engines[value] = KerasApplicationEngine("resnet50", "random", **{option: value}).load()
        engines[value].warm_up()
    return engines


def _model_only_rate(engine, paths: list[Path], batch_size: int) -> float:
    """Images/s of the model alone on already-decoded inputs: the ceiling for the end-to-end figure."""
    batch = _prepared_batch(engine, paths, batch_size)
    seconds = min(repeat_timed(lambda: engine.extract(batch), 3))
    return batch_size / seconds


def measure_model(model: str, paths: list[Path], baseline_count: int, batch_size: int, workers: int,
                  peak_gflops: float) -> tuple[list[dict], dict]:
    settings = Settings.from_env(weights="random")
    engine = get_engine(model, settings)
    engine.warm_up()
    seconds, _ = _ours(engine, paths, batch_size, workers)
    ours_rate = len(paths) / seconds
    model_only = _model_only_rate(engine, paths, batch_size)

    seed_model, preprocess = seed_baseline.build_model(model)
    seed_baseline.extract_one(seed_model, preprocess, paths[0])
    chosen = paths[:baseline_count]
    baseline_seconds = sum(repeat_timed(lambda p=p: seed_baseline.extract_one(seed_model, preprocess, p), 1)[0]
                           for p in chosen)
    baseline_rate = len(chosen) / baseline_seconds

    gflop_per_image = 2.0 * count_macs(seed_model) / 1e9
    achieved = ours_rate * gflop_per_image
    speedup = ours_rate / baseline_rate
    rate_target, speedup_target = TARGET_RATE.get(model), TARGET_SPEEDUP.get(model)
    met = None
    if rate_target:
        met = ours_rate >= rate_target and speedup >= speedup_target
    target = f">= {rate_target:.0f} img/s and >= {speedup_target:.0f}x" if rate_target else ""
    rows = [
        result_row("extraction", f"{model} end to end", "img/s", ours_rate, baseline_rate, higher_is_better=True,
                   target=target, met=met, images=len(paths), baseline_images=len(chosen),
                   batch_size=batch_size, decode_workers=workers),
        result_row("extraction", f"{model} model only, batch {batch_size}", "img/s", model_only, None,
                   higher_is_better=True, note="decoded inputs: the ceiling for the line above"),
        result_row("extraction", f"{model} share of the measured fp32 peak", "%",
                   100.0 * achieved / peak_gflops, 100.0 * baseline_rate * gflop_per_image / peak_gflops,
                   higher_is_better=True, gflop_per_image=gflop_per_image, peak_gflop_s=peak_gflops,
                   model_only_percent=100.0 * model_only * gflop_per_image / peak_gflops),
    ]
    detail = {"images": len(paths), "ours_seconds": seconds, "ours_img_s": ours_rate,
              "model_only_img_s": model_only, "baseline_img_s": baseline_rate, "gflop_per_image": gflop_per_image,
              "achieved_gflop_s": achieved, "peak_gflop_s": peak_gflops}
    return rows, detail


def measure_bfloat16_option(paths: list[Path], batch_size: int, workers: int) -> tuple[list[dict], dict]:
    """ResNet50 with `precision="bfloat16"` against float32 with the same weights: speed and agreement."""
    engines = _resnet50_pair("precision", ("float32", "bfloat16"))
    sample = _prepared_batch(engines["float32"], paths, batch_size)
    cosine = np.sum(engines["float32"].extract(sample) * engines["bfloat16"].extract(sample), axis=1)
    rates = {precision: _model_only_rate(engine, paths, batch_size) for precision, engine in engines.items()}
    seconds, _ = _ours(engines["bfloat16"], paths, batch_size, workers)
    rows = [
        result_row("extraction", "resnet50 bfloat16 option, model only", "img/s", rates["bfloat16"],
                   rates["float32"], higher_is_better=True, target="cosine to float32 >= 0.999",
                   met=float(cosine.min()) >= 0.999, min_cosine_to_float32=float(cosine.min()),
                   note="baseline column: float32, same weights; opt-in (KerasApplicationEngine precision=)"),
        result_row("extraction", "resnet50 bfloat16 option, end to end", "img/s", len(paths) / seconds, None,
                   higher_is_better=True),
    ]
    return rows, {"model_only_img_s": rates, "end_to_end_img_s": len(paths) / seconds,
                  "min_cosine_to_float32": float(cosine.min())}


def measure_tensorflow_runtime(paths: list[Path], batch_size: int, workers: int) -> tuple[list[dict], dict]:
    """ResNet50 under ONNX Runtime (the default) against TensorFlow with the same weights: speed and agreement."""
    engines = _resnet50_pair("runtime", ("onnxruntime", "tensorflow"))
    sample = _prepared_batch(engines["tensorflow"], paths, batch_size)
    vectors = {runtime: engine.extract(sample) for runtime, engine in engines.items()}
    cosine = np.sum(vectors["onnxruntime"] * vectors["tensorflow"], axis=1)
    largest_difference = float(np.abs(vectors["onnxruntime"] - vectors["tensorflow"]).max())
    rates = {runtime: _model_only_rate(engine, paths, batch_size) for runtime, engine in engines.items()}
    end_to_end = {runtime: len(paths) / _ours(engine, paths, batch_size, workers)[0]
                  for runtime, engine in engines.items()}
    one = sample[:1]
    single = {runtime: 1000 * float(np.median(repeat_timed(lambda e=engine: e.extract(one), 10)))
              for runtime, engine in engines.items()}
    note = "baseline column: IMAGE_SEARCH_RUNTIME=tensorflow, same weights"
    rows = [
        result_row("extraction", "resnet50 ONNX Runtime vs TensorFlow, model only", "img/s", rates["onnxruntime"],
                   rates["tensorflow"], higher_is_better=True, target="cosine to TensorFlow >= 0.999",
                   met=float(cosine.min()) >= 0.999, min_cosine_to_tensorflow=float(cosine.min()),
                   largest_difference=largest_difference, note=note),
        result_row("extraction", "resnet50 ONNX Runtime vs TensorFlow, end to end", "img/s",
                   end_to_end["onnxruntime"], end_to_end["tensorflow"], higher_is_better=True, note=note),
        result_row("extraction", "resnet50 ONNX Runtime vs TensorFlow, one image", "ms", single["onnxruntime"],
                   single["tensorflow"], higher_is_better=False, note=note),
    ]
    return rows, {"model_only_img_s": rates, "end_to_end_img_s": end_to_end, "one_image_ms": single,
                  "min_cosine_to_tensorflow": float(cosine.min()), "largest_difference": largest_difference}


def run(models: list[str], paths: list[Path], baseline_count: int, batch_size: int, workers: int,
        peak_gflops: float, resnet50_options: bool = False) -> tuple[list[dict], dict]:
    rows, details = [], {}
    for model in models:
        model_rows, detail = measure_model(model, paths, baseline_count, batch_size, workers, peak_gflops)
        rows += model_rows
        details[model] = detail
    if resnet50_options:  # the opt-in bfloat16 precision and the TensorFlow runtime
        option_rows, details["resnet50-bfloat16"] = measure_bfloat16_option(paths, batch_size, workers)
        rows += option_rows
        runtime_rows, details["resnet50-runtimes"] = measure_tensorflow_runtime(paths, batch_size, workers)
        rows += runtime_rows
    return rows, details
