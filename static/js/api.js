// Every call to the server goes through here: common headers, the access-token dance, error messages.

const TOKEN_KEY = "imgsearch.token";

export class ApiError extends Error {
  /** `data` is the server's JSON error body, when it sent one (a 422 for words carries `suggestions`). */
  constructor(message, status = 0, data = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.data = data;
  }
}

let tokenProvider = async () => null;
let pendingPrompt = null;

/** `provider()` asks the user for the access token and resolves to it, or to null when they cancel. */
export function setTokenProvider(provider) {
  tokenProvider = provider;
}

function headers(extra = {}) {
  const result = { "X-Requested-With": "fetch", ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) result.Authorization = `Bearer ${token}`;
  return result;
}

// Several requests can hit a 401 together (a batch upload); they share one prompt.
async function obtainToken() {
  if (!pendingPrompt) {
    pendingPrompt = Promise.resolve(tokenProvider()).finally(() => {
      pendingPrompt = null;
    });
  }
  const token = await pendingPrompt;
  if (!token) throw new ApiError("This action needs the server's access token.", 401);
  sessionStorage.setItem(TOKEN_KEY, token);
}

// `send` is called again after the user gives a token; anything with a `status` works as its result.
async function withAuthRetry(send) {
  const sentWith = sessionStorage.getItem(TOKEN_KEY);
  let response = await send();
  if (response.status !== 401) return response;
  if (sessionStorage.getItem(TOKEN_KEY) === sentWith) {
    sessionStorage.removeItem(TOKEN_KEY);
    await obtainToken();
  }
  response = await send();
  if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
  return response;
}

function messageFor(status, body, fallback) {
  if (body && typeof body.error === "string" && body.error) return body.error;
  if (status === 0) return "The server could not be reached.";
  return fallback || `The server answered with status ${status}.`;
}

async function parseJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

async function send(method, url, body) {
  let response;
  try {
    response = await withAuthRetry(() => {
      const init = { method, headers: headers(), cache: "no-store" };
      if (body instanceof FormData) {
        init.body = body;
      } else if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
      return fetch(url, init);
    });
  } catch (error) {
    if (error instanceof ApiError) throw error;
    throw new ApiError("The server could not be reached.", 0);
  }
  const data = await parseJson(response);
  if (!response.ok) throw new ApiError(messageFor(response.status, data, response.statusText), response.status, data);
  return data;
}

const enc = encodeURIComponent;

export const imageUrl = (name) => `/images/${enc(name)}`;
export const thumbUrl = (name) => `/images/thumb/${enc(name)}`;

// Query parameters without the empty ones.
function queryString(params) {
  const entries = Object.entries(params).filter(([, value]) => value !== undefined && value !== null && value !== "");
  return entries.length ? `?${new URLSearchParams(entries)}` : "";
}

export const getStatus = () => send("GET", "/api/status");
/** filters: {source, tag, taken_from, taken_to, type}, each optional. */
export const listImages = (filters = {}) => send("GET", `/api/images${queryString(filters)}`);
export const listTags = () => send("GET", "/api/tags");
export const imageInfo = (name) => send("GET", `/api/image/${enc(name)}`);
export const deleteImage = (name) => send("DELETE", `/api/delete-image/${enc(name)}`);
export const deleteImages = (names) => send("POST", "/api/delete-images", { filenames: names });

/**
 * One search. query: {file} | {url} | {filename} | {} (words or "more like" images alone), plus optional
 * text, box ([x, y, w, h] fractions), positive and negative (library names), filters ({source, tag, taken_from,
 * taken_to, type}). options: {k, page, addToLibrary, minSimilarity (0..1, 0 = off)}.
 */
export function search(query, { k, page = 1, addToLibrary = false, minSimilarity = 0 } = {}) {
  const fields = {
    url: query.url, filename: query.filename, text: query.text, box: query.box,
    positive: query.positive?.length ? query.positive : undefined,
    negative: query.negative?.length ? query.negative : undefined,
    ...query.filters,
    k, page: page > 1 ? page : undefined,
    min_similarity: minSimilarity > 0 ? minSimilarity : undefined,
    add_to_library: addToLibrary || undefined,
  };
  const present = Object.entries(fields).filter(([, value]) => value !== undefined && value !== null && value !== "");
  // Only a file needs multipart. There a list of names is one field per name (a name may hold a comma),
  // and the box is "x,y,w,h".
  if (!query.file) return send("POST", "/api/search", Object.fromEntries(present));
  const form = new FormData();
  form.append("file", query.file, query.file.name || "pasted-image.png");
  for (const [name, value] of present) {
    if (name === "positive" || name === "negative") value.forEach((item) => form.append(name, item));
    else form.append(name, Array.isArray(value) ? value.join(",") : String(value));
  }
  return send("POST", "/api/search", form);
}

/**
 * One page (1-based) of near-duplicate groups; a null threshold lets the server use its default. Groups made
 * only of the bundled examples come back only with `originalGroups`.
 */
export function findDuplicates({ threshold = null, page = 1, perPage = 20, originalGroups = false } = {}) {
  return send("GET", `/api/duplicates${queryString({
    page, per_page: perPage, threshold, original_groups: originalGroups ? 1 : null,
  })}`);
}

// XMLHttpRequest rather than fetch because only it reports upload progress.
function xhrUpload(file, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/upload-image");
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => resolve({ status: xhr.status, data: xhr.response });
    xhr.onerror = () => resolve({ status: 0, data: null });
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Uploads one file; resolves to the server's JSON ({success, filename}) or throws ApiError. */
export async function uploadFile(file, onProgress = () => {}) {
  const { status, data } = await withAuthRetry(() => xhrUpload(file, onProgress));
  if (status < 200 || status >= 300) {
    const fallback = status === 413 ? "The file is too large." : "";
    throw new ApiError(messageFor(status, data, fallback), status);
  }
  return data;
}

function parseEventBlock(block) {
  const data = block
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""))
    .join("\n");
  return data ? JSON.parse(data) : null;
}

/**
 * Runs (POST) or follows (GET) the feature-generation job, calling onEvent for every progress event.
 * Resolves to the completion event; throws ApiError on an error event or a dropped stream.
 */
export async function generateFeatures({ start = true, onEvent = () => {} } = {}) {
  let response;
  try {
    response = await withAuthRetry(() =>
      fetch("/api/generate-features", {
        method: start ? "POST" : "GET",
        headers: headers({ Accept: "text/event-stream" }),
        cache: "no-store",
      }),
    );
  } catch (error) {
    if (error instanceof ApiError) throw error;
    throw new ApiError("The server could not be reached.", 0);
  }
  if (!response.ok) {
    throw new ApiError(messageFor(response.status, await parseJson(response)), response.status);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        break;
      }
      if (chunk.done) break;
      buffer += chunk.value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEventBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event) continue;
        if (event.error) throw new ApiError(event.error, 500);
        onEvent(event);
        if (event.complete) return event;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  throw new ApiError("The connection closed before feature generation finished.", 0);
}
