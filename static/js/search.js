// The Search tab: three ways to give a query image, the result options, and the results grid.
import { imageUrl, search, thumbUrl } from "./api.js";
import { Pager, bindDropTarget, clearLazy, el, formatCount, icon, lazyImage, percent } from "./dom.js";
import { openViewer } from "./modal.js";
import { showToast, toastError } from "./toast.js";
import { initTablist } from "./tabs.js";

const PICKER_PAGE_SIZE = 48;
// Matches this close to the query are almost always the same picture saved again (re-encoded, resized).
const NEAR_EXACT_SIMILARITY = 0.98;

const byId = (id) => document.getElementById(id);

const percentLabel = (fraction) => `${Number((fraction * 100).toFixed(1))}%`;

export class SearchView {
  constructor({ onLibraryChanged }) {
    this.onLibraryChanged = onLibraryChanged;
    this.library = [];
    this.pickerFilter = "";
    this.lastQuery = null;
    this.requestId = 0;
    this.previewUrl = null;
    this.answer = null;
    // The results on screen (after the near-exact filter), in the viewer's order.
    this.results = [];
    this.modes = initTablist(byId("panel-search").querySelector(".modes"), (tab) => {
      byId("add-to-library-option").hidden = tab.id === "mode-library";
    });
    this.picker = byId("picker-grid");
    this.pickerPager = new Pager(byId("picker-pager"), () => this.renderPicker());
    this.bindUpload();
    const queryImage = byId("query-image");
    queryImage.addEventListener("error", () => queryImage.classList.add("broken"));
    queryImage.addEventListener("load", () => queryImage.classList.remove("broken"));
    byId("url-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const url = byId("query-url").value.trim();
      if (url) this.run({ url });
    });
    byId("picker-filter").addEventListener("input", (event) => {
      this.pickerFilter = event.target.value.trim().toLowerCase();
      this.pickerPager.page = 0;
      this.renderPicker();
    });
    byId("result-count").addEventListener("change", () => {
      if (this.lastQuery) this.run(this.lastQuery, { repeat: true });
    });
    byId("min-similarity").addEventListener("change", () => {
      byId("min-similarity").value = String(Math.round(this.minSimilarity() * 1000) / 10);
      if (this.lastQuery) this.run(this.lastQuery, { repeat: true });
    });
    // A display filter only: the results already in hand are re-rendered, the server is not asked again.
    byId("hide-near-exact").addEventListener("change", () => {
      if (this.answer) this.renderResults();
    });
  }

  /** The minimum-similarity box as a 0..1 fraction; anything unreadable counts as 0 (off). */
  minSimilarity() {
    const value = byId("min-similarity").valueAsNumber;
    return Number.isFinite(value) ? Math.max(0, Math.min(100, value)) / 100 : 0;
  }

  /** mode: "upload" | "url" | "library" */
  setMode(mode) {
    this.modes.select(byId(`mode-${mode}`));
  }

  /** data: the /api/images answer. */
  setLibrary({ images = [] }) {
    const signature = JSON.stringify(images);
    if (signature === this.librarySignature) return;
    this.librarySignature = signature;
    this.library = images;
    this.renderPicker();
  }

  /** "Find similar" from the gallery: a library search for `name`. */
  searchByFilename(name) {
    this.setMode("library");
    return this.run({ filename: name });
  }

  bindUpload() {
    const zone = byId("query-zone");
    const input = byId("query-input");
    zone.addEventListener("click", (event) => {
      if (event.target !== input) input.click();
    });
    input.addEventListener("change", () => {
      const [file] = input.files;
      input.value = "";
      if (file) this.run({ file });
    });
    bindDropTarget(zone, ([file]) => this.run({ file }), (url) => {
      this.setMode("url");
      byId("query-url").value = url;
      this.run({ url });
    });
    document.addEventListener("paste", (event) => {
      if (byId("panel-search").hidden || document.querySelector("dialog[open]")) return;
      const file = [...(event.clipboardData?.files || [])].find((item) => item.type.startsWith("image/"));
      if (!file) return;
      event.preventDefault();
      this.setMode("upload");
      this.run({ file });
    });
  }

  renderPicker() {
    const names = this.pickerFilter
      ? this.library.filter((name) => name.toLowerCase().includes(this.pickerFilter))
      : this.library;
    byId("picker-empty").hidden = names.length > 0;
    byId("picker-empty").textContent = this.library.length
      ? "No image name matches the filter."
      : "No library images to choose from yet. Upload some in the Gallery tab.";
    const [start, end] = this.pickerPager.update(names.length, PICKER_PAGE_SIZE);
    clearLazy(this.picker);
    const current = this.lastQuery?.filename;
    this.picker.append(...names.slice(start, end).map((name) => {
      const button = el("button", {
        type: "button", class: "card-thumb", "aria-label": `Search with ${name}`, title: name,
        "aria-pressed": name === current ? "true" : "false",
      }, lazyImage(thumbUrl(name), name));
      button.addEventListener("click", () => this.run({ filename: name }));
      return el("li", { class: "card picker-item", "data-filename": name }, button,
        el("span", { class: "card-name" }, name));
    }));
  }

  /** query: {file} | {url} | {filename}. `repeat` re-runs the last query with a new result count. */
  async run(query, { repeat = false } = {}) {
    const id = ++this.requestId;
    const k = Number(byId("result-count").value) || 6;
    const addToLibrary = !repeat && !query.filename && byId("add-to-library").checked;
    const minSimilarity = this.minSimilarity();
    const status = byId("search-status");
    const resultsBox = byId("search-results");
    status.classList.remove("error");
    status.replaceChildren(el("span", { class: "spinner", "aria-hidden": "true" }), "Searching…");
    resultsBox.setAttribute("aria-busy", "true");
    this.lastQuery = query;
    if (query.filename) this.markPicked(query.filename);

    let data;
    try {
      data = await search(query, { k, addToLibrary, minSimilarity });
    } catch (error) {
      if (id !== this.requestId) return;
      resultsBox.removeAttribute("aria-busy");
      status.classList.add("error");
      status.textContent = `Search failed: ${error.message}`;
      toastError(error);
      return;
    }
    if (id !== this.requestId) return;
    resultsBox.removeAttribute("aria-busy");
    this.answer = {
      results: data.results || [],
      minSimilarity,
      about: `for ${this.describe(query)}${data.model ? ` (${data.model}, ${data.metric})` : ""}`,
    };
    this.showQuery(query, data.query || {});
    this.renderResults();
    // On a phone the results start below a long picker; bring them up rather than leave them unseen.
    if (resultsBox.getBoundingClientRect().top > window.innerHeight * 0.75) status.scrollIntoView({ block: "start" });
    if (addToLibrary) {
      if (data.query?.filename) {
        showToast(`Added ${data.query.filename} to the library.`, "success");
        // Now a library image: repeating the query must leave the copy out of its own results.
        this.lastQuery = { filename: data.query.filename };
      } else {
        showToast("The search ran, but the server did not add the query image to the library.", "info");
      }
      this.onLibraryChanged();
    }
  }

  describe(query) {
    if (query.file) return query.file.name || "the pasted image";
    if (query.url) return query.url;
    return query.filename;
  }

  markPicked(name) {
    this.picker.querySelectorAll("[aria-pressed]").forEach((button) => {
      button.setAttribute("aria-pressed", button.closest("li").dataset.filename === name ? "true" : "false");
    });
  }

  showQuery(query, answered) {
    const img = byId("query-image");
    img.classList.remove("broken");
    if (this.previewUrl) {
      URL.revokeObjectURL(this.previewUrl);
      this.previewUrl = null;
    }
    if (query.file) {
      this.previewUrl = URL.createObjectURL(query.file);
      img.src = this.previewUrl;
    } else if (query.url) {
      img.src = answered.image_url || query.url;
    } else {
      img.src = answered.image_url || imageUrl(query.filename);
    }
    img.alt = `Query image: ${this.describe(query)}`;
    byId("query-caption").textContent = this.describe(query);
    byId("query-caption").title = this.describe(query);
  }

  /** Shows the last answer, less the near-exact copies when the user hides them. */
  renderResults() {
    const { results, minSimilarity, about } = this.answer;
    const hide = byId("hide-near-exact").checked;
    const visible = hide ? results.filter((result) => result.similarity < NEAR_EXACT_SIMILARITY) : results;
    const hidden = results.length - visible.length;
    this.results = visible;

    const notes = [`${formatCount(visible.length, "match", "matches")} ${about}`];
    if (minSimilarity > 0) notes.push(`${percentLabel(minSimilarity)} similar or more`);
    if (hidden) notes.push(`${formatCount(hidden, "near-exact copy", "near-exact copies")} hidden`);
    byId("search-status").textContent = notes.join(" · ");

    const empty = byId("results-empty");
    empty.hidden = visible.length > 0;
    empty.textContent = this.emptyText(results.length, minSimilarity);
    byId("search-results").hidden = false;
    byId("results-heading").textContent = visible.length
      ? `Top ${formatCount(visible.length, "match", "matches")}`
      : "Top matches";
    const grid = byId("results-grid");
    clearLazy(grid);
    grid.append(...visible.map((result, index) => this.resultCard(result, index)));
  }

  emptyText(total, minSimilarity) {
    if (total > 0) {
      const limit = percentLabel(NEAR_EXACT_SIMILARITY);
      const which = total === 1
        ? `The only match is a near-exact copy of the query (${limit} similar or more), so it is hidden.`
        : `All ${total} matches are near-exact copies of the query (${limit} similar or more), so they are hidden.`;
      return `${which} Untick “Hide near-exact copies of the query” to show ${total === 1 ? "it" : "them"}.`;
    }
    if (minSimilarity > 0) {
      return `No match is ${percentLabel(minSimilarity)} similar or more. Lower the minimum similarity to see more.`;
    }
    return "No matches. Add images to the library or generate their features first.";
  }

  resultCard(result, index) {
    const name = result.filename;
    const similarity = percent(result.similarity);
    const view = el("button", {
      type: "button", class: "card-thumb", "aria-label": `View ${name}, ${similarity} similar`,
    }, lazyImage(result.thumb_url || thumbUrl(name), name));
    view.addEventListener("click", () => this.openResult(index));

    const similar = el("button", {
      type: "button", class: "icon-btn", "aria-label": `Find similar to ${name}`, title: "Find similar",
    }, icon("i-search"));
    similar.addEventListener("click", () => this.run({ filename: name }));

    const badges = el("div", { class: "card-badges" },
      el("span", { class: "badge badge-score" }, similarity));
    if (result.is_original) badges.append(el("span", { class: "badge badge-original" }, "Original"));

    const meter = el("span", { class: "meter", "aria-hidden": "true" }, el("span", { class: "meter-fill" }));
    meter.firstChild.style.width = similarity;

    return el("li", { class: "card result", "data-filename": name }, view, badges, meter,
      el("div", { class: "card-footer" }, el("span", { class: "card-name", title: name }, name),
        el("div", { class: "card-actions" }, similar)));
  }

  openResult(index) {
    openViewer(this.results.map((result) => ({
      src: result.image_url || imageUrl(result.filename),
      title: result.filename,
      meta: `${percent(result.similarity)} similar${result.is_original ? " · Original" : ""}`,
    })), index);
  }
}
