"""The seed projects' way of doing things, rebuilt as the baseline every benchmark compares against.

Per image: `keras.utils.load_img(path, target_size=(224, 224))`, `img_to_array`, the model's
preprocessing, `model.predict` on a batch of one. Per search: sklearn `cosine_similarity` of the raw
query vector against the raw (unnormalised) feature matrix, then a full `argsort`.

`python -m bench.seed_baseline --data-dir D --model M --port P` serves that search path over HTTP with
Flask's development server, reading `features.npy` and `filenames.npy` from the data folder at startup.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

TOP_K = 6


def build_model(model: str):
    """(Keras model, preprocess function) as the seed would use them; ResNet50 with random weights here."""
    if model == "resnet50":
        from keras.applications import resnet50

        model = resnet50.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
        return model, resnet50.preprocess_input
    if model == "efficientnet-lite0":
        from imgsearch.config import Settings
        from imgsearch.engines.efficientnet_lite import (EfficientNetLiteEngine, assign_weights, build_backbone,
                                                        load_converted)

        engine = EfficientNetLiteEngine(cache_dir=Settings.from_env().cache_dir).load()  # makes the weights cache
        layers = load_converted(engine.cache_path)
        backbone = build_backbone(layers, engine.input_size)
        assign_weights(backbone, layers)
        return backbone, lambda x: (x - 127.0) / 128.0
    raise ValueError(f"no seed-style baseline for {model!r}")


def extract_one(model, preprocess, source) -> np.ndarray:
    """One image (a path or a file object) -> (1, dim) raw features, the seed way."""
    import keras

    image = keras.utils.load_img(source, target_size=(224, 224))
    batch = np.expand_dims(keras.utils.img_to_array(image), axis=0)
    return model.predict(preprocess(batch), verbose=0)


def search(query: np.ndarray, features: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(1, dim) raw query against (n, dim) raw features -> (indices, similarities) of the k best."""
    from sklearn.metrics.pairwise import cosine_similarity

    similarities = cosine_similarity(query, features)[0]
    best = similarities.argsort()[::-1][:k]
    return best, similarities[best]


def create_app(data_dir: Path, model_name: str):
    from flask import Flask, jsonify, request

    model, preprocess = build_model(model_name)
    features = np.load(data_dir / "features.npy")
    filenames = np.load(data_dir / "filenames.npy")
    app = Flask(__name__)

    @app.get("/api/check-features")
    def check_features():
        return jsonify({"exists": len(features) > 0})

    @app.post("/api/search")
    def search_route():
        query = extract_one(model, preprocess, io.BytesIO(request.files["file"].read()))
        best, similarities = search(query, features)
        return jsonify({"results": [{"filename": str(filenames[i]), "similarity": float(s)}
                                    for i, s in zip(best, similarities)]})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    create_app(args.data_dir, args.model).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
