"""Measure the vector index backends at scale on synthetic clustered vectors (not part of the test suite).

    .venv/bin/python bench/bench_index.py --count 1000000 --dim 2048 --milvus-count 100000

The vectors live in a memory-mapped file under --workdir and are placed in a real FeatureStore, so the
exact and faiss backends run the application's own code without holding a second in-RAM copy of the data
(the page cache holds it). Memory is reported as the change in anonymous RSS (RssAnon), which leaves that
file-backed data out. Data: unit vectors from a 64-d latent mixture of 200 Gaussian groups, projected to
`dim` dimensions plus isotropic noise, so nearest neighbours are continuous rather than trivially separated
clusters. Queries are extra draws from the same distribution, not rows of the index.

Prints one JSON object per measurement and writes them all to --out.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgsearch.index.exact import ExactIndex  # noqa: E402
from imgsearch.index.faiss_index import TRAIN_PER_LIST, FaissIndex  # noqa: E402
from imgsearch.index.milvus_index import MilvusIndex  # noqa: E402
from imgsearch.store import FeatureStore  # noqa: E402

MODEL_ID = "synthetic-bench-cosine"
LATENT, GROUPS, NOISE = 64, 200, 0.35
CHUNK = 50_000
K = 6


def anon_rss() -> int:
    """Anonymous resident memory in bytes (heap, not page cache of mapped files)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("RssAnon not found")


class Synthetic:
    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.basis = (rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
        self.centres = (1.5 * rng.standard_normal((GROUPS, LATENT))).astype(np.float32)

    def draw(self, count: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream])
        latent = self.centres[rng.integers(0, GROUPS, count)] + rng.standard_normal((count, LATENT), np.float32)
        noise = rng.standard_normal((count, self.dim), np.float32) * (NOISE * np.sqrt(LATENT / self.dim))
        vectors = latent @ self.basis + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def matrix(self, directory: Path, count: int) -> np.memmap:
        """The data set as a memory-mapped file, generated once and reused by later runs."""
        path = directory / f"vectors-{count}x{self.dim}-seed{self.seed}-v1.npy"
        if path.exists():
            return np.load(path, mmap_mode="r")
        matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, self.dim))
        for start in range(0, count, CHUNK):
            stop = min(start + CHUNK, count)
            matrix[start:stop] = self.draw(stop - start, stream=1 + start // CHUNK)
        matrix.flush()
        return matrix


def store_over(matrix: np.ndarray) -> FeatureStore:
    """A FeatureStore whose originals are `matrix` itself (a memmap), without copying it."""
    store = FeatureStore(MODEL_ID, matrix.shape[1])
    names = [f"img{i:07d}.jpg" for i in range(len(matrix))]
    store.originals.replace_all(names, matrix, np.zeros((len(matrix), 2), np.int64))
    return store


def latency(search, queries: np.ndarray) -> tuple[list, dict]:
    search(queries[:1])  # warm up
    times, found = [], []
    for query in queries:
        start = time.perf_counter()
        found.append(search(query[None])[0])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return found, {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
                   "queries": len(queries)}


def recall(truth: list[list[int]], found: list[list[int]]) -> float:
    return round(float(np.mean([len(set(t[:K]) & set(f[:K])) / K for t, f in zip(truth, found)])), 4)


def row_ids(hits) -> list[int]:
    return [int(name[3:10]) for name, _ in hits]


def index_gib(index) -> float:
    """A faiss index's size as serialised, which is within a few percent of what it holds in RAM."""
    return round(faiss.serialize_index(index).nbytes / 2**30, 3)


def report(results: list, **entry) -> None:
    print(json.dumps(entry), flush=True)
    results.append(entry)


def faiss_topk(index, queries: np.ndarray, nprobe: int) -> tuple[list, dict]:
    def search(query):
        _, ids = index.search(query, K, params=faiss.SearchParametersIVF(nprobe=nprobe))
        return ids.tolist()
    return latency(search, queries)


def add_chunks(index, matrix) -> None:
    for start in range(0, len(matrix), CHUNK):
        index.add(np.ascontiguousarray(matrix[start:start + CHUNK]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=20, help="single-query timings for brute force")
    parser.add_argument("--milvus-count", type=int, default=100_000)
    parser.add_argument("--hnsw-count", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_index")
    parser.add_argument("--out", type=Path, default=Path("bench_index.json"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["faiss", "options", "hnsw", "milvus"])
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    report(results, what="setup", count=args.count, dim=args.dim, latent=LATENT, groups=GROUPS, noise=NOISE,
           faiss_threads=faiss.omp_get_max_threads(), faiss_version=faiss.__version__)

    data = Synthetic(args.dim)
    start = time.perf_counter()
    matrix = data.matrix(args.workdir, args.count)
    queries = data.draw(args.queries, stream=0)
    report(results, what="generate", seconds=round(time.perf_counter() - start, 1),
           gib=round(matrix.nbytes / 2**30, 2))

    # ----- exact: ground truth in one batched pass, then single-query latency ---------------------
    store = store_over(matrix)
    exact = ExactIndex(store, "cosine")
    start = time.perf_counter()
    truth = [row_ids(hits) for hits in exact.search(queries, K)]
    truth_seconds = time.perf_counter() - start
    _, timing = latency(lambda q: exact.search(q, K), queries[:args.exact_queries])
    report(results, what="exact", build_s=0, ram_gib=round(matrix.nbytes / 2**30, 2),
           batch_truth_s=round(truth_seconds, 1), recall_at_6=1.0, **timing)

    if "faiss" not in args.skip:
        before = anon_rss()
        index = FaissIndex(store, "cosine", args.workdir / "features" / MODEL_ID)
        start = time.perf_counter()
        index.rebuild()
        build = time.perf_counter() - start
        delta = anon_rss() - before
        checkpoint = sum(p.stat().st_size for p in index.directory.iterdir())
        report(results, what="faiss-build", lists=index.describe()["lists"], build_and_save_s=round(build, 1),
               ram_delta_gib=round(delta / 2**30, 2), checkpoint_gib=round(checkpoint / 2**30, 2))
        for nprobe in (8, 16, 32, 64, 128):
            index.nprobe = nprobe
            found, timing = latency(lambda q: index.search(q, K), queries)
            report(results, what="faiss", nprobe=nprobe, recall_at_6=recall(truth, [row_ids(h) for h in found]),
                   **timing)
        quantizer_centroids = index._index.quantizer.reconstruct_n(0, index._index.nlist)
        del index
        gc.collect()
        reload_index = FaissIndex(store, "cosine", args.workdir / "features" / MODEL_ID)
        start = time.perf_counter()
        reload_index.rebuild()
        report(results, what="faiss-reload", startup_s=round(time.perf_counter() - start, 1),
               consistent=reload_index.describe()["consistent"])
        del reload_index
        gc.collect()

    if "hnsw" not in args.skip:
        measure_hnsw(results, matrix[:args.hnsw_count], queries, args.hnsw_count)

    if "milvus" not in args.skip:
        measure_milvus(results, matrix[:args.milvus_count], queries, args.workdir)

    if "faiss" not in args.skip and "options" not in args.skip:
        measure_options(results, matrix, queries, truth, quantizer_centroids)

    args.out.write_text(json.dumps(results, indent=1))


def measure_options(results, matrix, queries, truth, centroids) -> None:
    """Quantised and dimension-reduced variants on the same lists, with the same probe counts."""
    dim, nlist = matrix.shape[1], len(centroids)

    def ivf(kind, d, quantizer_vectors):
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(quantizer_vectors)
        if kind == "sq8":
            return faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                 faiss.METRIC_INNER_PRODUCT), quantizer
        if kind.startswith("pq"):
            return faiss.IndexIVFPQ(quantizer, d, nlist, int(kind[2:]), 8, faiss.METRIC_INNER_PRODUCT), quantizer
        return faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT), quantizer

    sample = np.ascontiguousarray(matrix[np.linspace(0, len(matrix) - 1, nlist * TRAIN_PER_LIST).astype(np.int64)])
    for kind in ("sq8", "pq256"):
        start = time.perf_counter()
        index, quantizer = ivf(kind, dim, centroids)
        index.train(sample)
        add_chunks(index, matrix)
        build = time.perf_counter() - start
        size = index_gib(index)
        for nprobe in (16, 32, 64):
            found, timing = faiss_topk(index, queries, nprobe=nprobe)
            report(results, what=f"faiss-ivf-{kind}", nprobe=nprobe, build_s=round(build, 1),
                   index_gib=size, recall_at_6=recall(truth, found), **timing)
        if kind.startswith("pq"):
            # Re-rank a longer PQ shortlist with the exact float vectors the feature store already holds.
            def reranked(query, shortlist=60):
                _, ids = index.search(query, shortlist, params=faiss.SearchParametersIVF(nprobe=32))
                rows = np.sort(ids[0][ids[0] >= 0])
                exact_scores = matrix[rows] @ query[0]
                return [rows[np.argsort(-exact_scores)[:K]].tolist()]
            found, timing = latency(reranked, queries)
            report(results, what=f"faiss-ivf-{kind}-rerank60", nprobe=32, recall_at_6=recall(truth, found), **timing)
        del index, quantizer
        gc.collect()

    reduced = 256
    start = time.perf_counter()
    pca = faiss.PCAMatrix(dim, reduced)
    pca.train(sample)
    small_sample = pca.apply(sample)
    small_sample /= np.linalg.norm(small_sample, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatIP(reduced)
    index = faiss.IndexIVFFlat(quantizer, reduced, nlist, faiss.METRIC_INNER_PRODUCT)
    clustering = faiss.Clustering(reduced, nlist)
    clustering.niter, clustering.spherical = 10, True
    clustering.train(small_sample, quantizer)
    index.is_trained = True
    for begin in range(0, len(matrix), CHUNK):
        block = pca.apply(np.ascontiguousarray(matrix[begin:begin + CHUNK]))
        index.add(block / np.linalg.norm(block, axis=1, keepdims=True))
    build = time.perf_counter() - start
    size = index_gib(index)
    small_queries = pca.apply(queries)
    small_queries /= np.linalg.norm(small_queries, axis=1, keepdims=True)
    for nprobe in (16, 32, 64):
        found, timing = faiss_topk(index, small_queries, nprobe=nprobe)
        report(results, what=f"faiss-pca{reduced}-ivf-flat", nprobe=nprobe, build_s=round(build, 1),
               index_gib=size, recall_at_6=recall(truth, found), **timing)
    del index, quantizer
    gc.collect()


def measure_hnsw(results, matrix, queries, count) -> None:
    """HNSW (flat and SQ8) on a prefix: ground truth recomputed for that prefix."""
    truth = [np.argsort(-(matrix @ q))[:K].tolist() for q in queries]
    for name, factory in (("hnsw32-flat", "HNSW32,Flat"), ("hnsw32-sq8", "HNSW32,SQ8")):
        start = time.perf_counter()
        index = faiss.index_factory(matrix.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(np.ascontiguousarray(matrix[:50_000]))
        add_chunks(index, matrix)
        build = time.perf_counter() - start
        size = index_gib(index)
        for ef in (32, 64, 128):
            faiss.ParameterSpace().set_index_parameter(index, "efSearch", ef)
            found, timing = latency(lambda q: index.search(q, K)[1].tolist(), queries)
            report(results, what=f"faiss-{name}", count=count, ef_search=ef, build_s=round(build, 1),
                   index_gib=size, recall_at_6=recall(truth, found), **timing)
        del index
        gc.collect()


def measure_milvus(results, matrix, queries, workdir: Path) -> None:
    """Milvus Lite through the application's MilvusIndex, on a prefix of the data."""
    count = len(matrix)
    store = store_over(matrix)
    exact = ExactIndex(store, "cosine")
    # Small batches keep temporary arrays small, so the RSS delta below is Milvus's own memory.
    truth = [row_ids(hits) for start in range(0, len(queries), 10) for hits in exact.search(queries[start:start + 10], K)]
    uri = workdir / f"milvus-{count}-{time.time_ns()}.db"
    before = anon_rss()
    index = MilvusIndex(store, "cosine", str(uri))
    start = time.perf_counter()
    index.rebuild()
    build = time.perf_counter() - start
    delta = anon_rss() - before
    found, timing = latency(lambda q: index.search(q, K), queries)
    report(results, what="milvus-lite", count=count, build_s=round(build, 1), ram_delta_gib=round(delta / 2**30, 2),
           disk_gib=round(sum(p.stat().st_size for p in uri.rglob("*") if p.is_file()) / 2**30, 2),
           recall_at_6=recall(truth, [row_ids(h) for h in found]), **timing)
    index.close()
    # As after an app restart: Milvus Lite loads its sealed, indexed segments from the .db folder.
    start = time.perf_counter()
    reopened = MilvusIndex(store, "cosine", str(uri))
    reopened.rebuild()
    startup = time.perf_counter() - start
    found, timing = latency(lambda q: reopened.search(q, K), queries)
    report(results, what="milvus-lite-reopened", count=count, startup_s=round(startup, 1),
           recall_at_6=recall(truth, [row_ids(h) for h in found]), **timing)
    reopened.close()


if __name__ == "__main__":
    main()
