"""JSON API routes: parse the request, call the core, shape the response."""
from __future__ import annotations

import hmac
import json
import logging
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from ..duplicates import MIN_THRESHOLD
from ..errors import RequestError
from ..query import MAX_RESULTS_DEPTH, Box, Filters, filenames as query_filenames
from ..service import ImageSearchService, SearchOptions, SearchOutcome
from .errors import ApiError

log = logging.getLogger(__name__)
blueprint = Blueprint("api", __name__, url_prefix="/api")

# A group of N alike images has up to N²/2 pairs: a response lists at most this many per group (200 groups a
# page at most: 4,000 pairs), and the rest are paged through /api/duplicates/<group>/pairs.
PAIRS_PER_GROUP = 20
MAX_PAIRS_PER_PAGE = 1000


def service() -> ImageSearchService:
    return current_app.extensions["image_search"]


@blueprint.before_request
def guard_requests():
    """Serve the API to the app's own pages and to clients that are not browsers; require the token for changes.

    Browsers say where a request comes from. A page on another site, or on another port of this machine
    ("same-site"), could otherwise make the server search for duplicates or hold progress streams open with
    a mere <img> tag, and post forms that change the library.
    """
    if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        raise ApiError(403, "Requests from other sites are not allowed.")
    if request.method not in ("POST", "DELETE", "PUT", "PATCH"):
        return
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        raise ApiError(403, "Cross-origin requests are not allowed.")
    token = service().settings.token
    if token and _changes_state():
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "This action needs the access token (Authorization: Bearer <token>).")


def _changes_state() -> bool:
    if request.endpoint != "api.search":
        return True
    return _flag(_field("add_to_library"))


def _field(name: str):
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            raise ApiError(400, "The JSON body is nested too deeply.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The JSON body must be an object.")
        return body.get(name)
    return request.form.get(name)


def _list_field(name: str):
    """A list: a JSON array, or a form field given once per item (names may hold commas)."""
    if request.is_json:
        return _field(name)
    return request.form.getlist(name) or None


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _text(name: str, value) -> str | None:
    """A text request field, or None when absent or empty; 400 when JSON gave it another type."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string.")
    return value


def _number(name: str, value, kind, low=None, high=None):
    """A numeric request field, or None when absent; 400 when it is not a number or out of range.

    An int field takes only whole numbers (JSON 2.5, true or 1e309 are refused, not truncated).
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ApiError(400, f"{name} must be a {'whole ' if kind is int else ''}number.")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, f"{name} must be a {'whole ' if kind is int else ''}number.") from None
    if low is not None and not low <= number <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}.")
    return number


def _k(value) -> int | None:
    """`k`: a whole number of at least 1; the service clamps larger ones to IMAGE_SEARCH_MAX_K."""
    k = _number("k", value, int)
    if k is not None and k < 1:
        raise ApiError(400, f"k must be between 1 and {service().settings.max_k}.")
    return k


def _hit_json(hit) -> dict:
    return {
        "filename": hit.filename,
        "similarity": hit.similarity,
        "image_url": url_for("images.image", filename=hit.filename),
        "thumb_url": url_for("images.thumbnail", filename=hit.filename),
        "is_original": hit.is_original,
    }


@blueprint.get("/status")
def status():
    settings = service().settings
    # `configured_model` is the engine asked for: with `fallback`, the one whose weights were missing.
    return jsonify({**service().status(), "configured_model": settings.model, "auth_required": bool(settings.token)})


@blueprint.get("/images")
def list_images():
    """The gallery; `source` (originals or uploads), `tag`, `taken_from`, `taken_to` and `type` narrow it."""
    return jsonify(service().list_images(Filters.parse(request.args)))


@blueprint.get("/image/<path:filename>")
def image_info(filename: str):
    return jsonify(service().image_info(filename))


@blueprint.get("/tags")
def tags():
    return jsonify({"tags": service().tag_counts()})


@blueprint.get("/check-features")
def check_features():
    return jsonify({"exists": len(service().store) > 0})


@blueprint.post("/upload-image")
def upload_image():
    files = [f for key in ("file", "files") for f in request.files.getlist(key)]
    if not files:
        raise ApiError(400, "No file part: send the image as multipart field 'file'.")
    limit = service().settings.max_files_per_request
    if len(files) > limit:
        raise ApiError(413, f"At most {limit} files per request.")
    max_bytes = service().settings.max_upload_bytes
    uploaded, failed = [], []
    for storage in files:
        data = storage.stream.read(max_bytes + 1)
        try:
            added = service().add_image(data, storage.filename or "")
            uploaded.append({"filename": added.filename, "original_name": storage.filename,
                             "already_in_library": added.already_in_library})
        except RequestError as exc:
            if len(files) == 1:
                raise
            failed.append({"original_name": storage.filename, "error": exc.message, "status": exc.status})
        except Exception:
            # One file's failure must not hide the files stored before it: report it beside them.
            if len(files) == 1:
                raise
            log.exception("Storing the upload %r failed", storage.filename)
            failed.append({"original_name": storage.filename, "error": "Internal server error.", "status": 500})
    if not uploaded:
        first = failed[0]
        return jsonify({"error": first["error"], "failed": failed}), first["status"]
    return jsonify({"success": True, "filename": uploaded[0]["filename"],
                    "already_in_library": uploaded[0]["already_in_library"], "uploaded": uploaded, "failed": failed})


@blueprint.delete("/delete-image/<path:filename>")
def delete_image(filename: str):
    service().delete_images([filename])
    return jsonify({"success": True})


@blueprint.post("/delete-images")
def delete_images():
    names = _field("filenames")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "Send JSON {\"filenames\": [...]}.")
    return jsonify({"success": True, "deleted": service().delete_images(names)})


def _event_stream(job) -> Response:
    return _event_stream_of(*service().jobs.listen(job))


def _event_stream_of(states, release=lambda: None) -> Response:
    """`release` runs when the stream ends, or when the server closes the response because the client left."""
    def stream():
        try:
            for state in states:
                yield ": keep-alive\n\n" if state is None else f"data: {json.dumps(state)}\n\n"
        finally:
            release()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(stream(), mimetype="text/event-stream", headers=headers)
    response.call_on_close(release)  # also when the stream never started
    return response


@blueprint.post("/generate-features")
def generate_features():
    return _event_stream(service().generate_features(retry_unreadable=True))


@blueprint.get("/generate-features")
def follow_features():
    job = service().jobs.last
    if job is None:
        summary = {"complete": True, **service().feature_counts(), "computed": 0, "skipped": []}
        return _event_stream_of([summary])
    return _event_stream(job)


@blueprint.post("/search")
def search():
    options = SearchOptions(
        k=_k(_field("k")),
        min_similarity=_number("min_similarity", _field("min_similarity"), float, 0.0, 1.0) or 0.0,
        engine=_text("engine", _field("engine")),
        page=_number("page", _field("page"), int, 1, MAX_RESULTS_DEPTH) or 1,
        box=Box.parse(_field("box")),
        text=_text("text", _field("text")),
        positive=query_filenames(_list_field("positive"), "positive"),
        negative=query_filenames(_list_field("negative"), "negative"),
        filters=Filters.parse({name: _field(name) for name in ("source", "tag", "taken_from", "taken_to", "type")}),
    )
    core = service()
    upload = request.files.get("file")
    url, filename = _field("url"), _field("filename")
    add_to_library = _flag(_field("add_to_library"))
    given = [name for name, value in (("file", upload is not None and upload.filename != ""), ("url", url),
                                      ("filename", filename)) if value]
    if len(given) > 1:
        raise ApiError(400, f"Give one query, not both {' and '.join(given[:2])}.")
    if upload is not None and upload.filename != "":
        data = upload.stream.read(core.settings.max_upload_bytes + 1)
        outcome = core.search_bytes(data, options, add_to_library, upload.filename)
    elif url:
        outcome = core.search_url(str(url).strip(), options, add_to_library)
    elif filename:
        outcome = core.search_filename(str(filename), options)
    elif options.box:
        raise ApiError(400, "A box is a region of a query image: give a 'file', a 'url' or a 'filename' with it.")
    else:
        outcome = core.search_without_image(options)
    return jsonify(_outcome_json(outcome, options))


@blueprint.get("/duplicates")
def duplicates():
    threshold = _number("threshold", request.args.get("threshold"), float, MIN_THRESHOLD, 1.0)
    page = _number("page", request.args.get("page"), int, 1, 1_000_000) or 1
    per_page = _number("per_page", request.args.get("per_page"), int, 1, 200) or 20
    threshold, groups = service().duplicate_groups(threshold)
    is_original = service().library.is_original
    # Groups made only of the shipped originals say nothing about the user's photos: shown when asked for.
    numbered = [(number, group) for number, group in enumerate(groups, 1)
                if _flag(request.args.get("original_groups")) or not all(map(is_original, group.members))]
    return jsonify({
        "threshold": threshold, "total_groups": len(numbered), "page": page, "per_page": per_page,
        "groups": [{
            "group": number,
            "members": [{"filename": name, "is_original": is_original(name),
                         "image_url": url_for("images.image", filename=name),
                         "thumb_url": url_for("images.thumbnail", filename=name)} for name in group.members],
            "pairs": _pairs_json(group.pairs(0, PAIRS_PER_GROUP)),
            "pair_count": group.pair_count,
            "best_similarity": group.best_similarity,
        } for number, group in numbered[(page - 1) * per_page: page * per_page]],
    })


@blueprint.get("/duplicates/<int:number>/pairs")
def duplicate_pairs(number: int):
    """One page of one group's pairs, most similar first; `number` is the group's 1-based place in the list."""
    threshold = _number("threshold", request.args.get("threshold"), float, MIN_THRESHOLD, 1.0)
    page = _number("page", request.args.get("page"), int, 1, 1_000_000) or 1
    per_page = _number("per_page", request.args.get("per_page"), int, 1, MAX_PAIRS_PER_PAGE) or 100
    threshold, groups = service().duplicate_groups(threshold)
    if not 1 <= number <= len(groups):
        raise ApiError(404, f"There are {len(groups)} groups at threshold {threshold:g}.")
    group = groups[number - 1]
    return jsonify({"threshold": threshold, "group": number, "pair_count": group.pair_count, "page": page,
                    "per_page": per_page, "pairs": _pairs_json(group.pairs((page - 1) * per_page, page * per_page))})


def _pairs_json(pairs) -> list[dict]:
    return [{"a": a, "b": b, "similarity": score} for a, b, score in pairs]


def _outcome_json(outcome: SearchOutcome, options: SearchOptions) -> dict:
    query = {"type": outcome.query_type}
    if outcome.query_filename:
        query["filename"] = outcome.query_filename
        query["image_url"] = url_for("images.image", filename=outcome.query_filename)
    if outcome.query_type in ("file", "url") and outcome.query_filename:
        query["already_in_library"] = outcome.already_in_library
    if options.box:
        query["box"] = options.box.as_list()
    if outcome.words:
        query["text"] = {
            "query": outcome.words.query,
            "terms": [{"text": term.text, "words": list(term.words),
                       "concepts": [{"id": c.wnid, "name": c.name, "definition": c.definition} for c in term.concepts]}
                      for term in outcome.words.terms],
            "unmatched": list(outcome.words.unmatched),
        }
    if options.positive or options.negative:
        query["positive"], query["negative"] = list(options.positive), list(options.negative)
    if options.filters.active:
        query["filters"] = options.filters.as_dict()
    return {"results": [_hit_json(hit) for hit in outcome.hits], "query": query,
            "model": outcome.engine.name, "metric": outcome.engine.metric, "page": outcome.page,
            "has_more": outcome.has_more, "reranked": outcome.reranked}
