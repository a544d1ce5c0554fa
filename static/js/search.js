// The Search tab: a query (an image, words, "more like" images, or several at once), a region of the query
// image, the refinement by results, the filters, and the paged results.
import { imageUrl, search, thumbUrl } from "./api.js";
import { Pager, bindDropTarget, clearLazy, el, formatCount, icon, lazyImage, percent } from "./dom.js";
import { examplesHidden } from "./examples.js";
import { libraryItem, openViewer } from "./modal.js";
import { RegionSelector } from "./region.js";
import { showToast, toastError } from "./toast.js";
import { initTablist } from "./tabs.js";
import { isUnknownWords, matchedWords, suggestionButtons } from "./words.js";

const PICKER_PAGE_SIZE = 48;
// Matches this close to the query are almost always the same picture saved again (re-encoded, resized).
const NEAR_EXACT_SIMILARITY = 0.98;
const FILTER_NAMES = ["source", "tag", "taken_from", "taken_to", "type"];

const byId = (id) => document.getElementById(id);

const percentLabel = (fraction) => `${Number((fraction * 100).toFixed(1))}%`;

export class SearchView {
  constructor({ onLibraryChanged }) {
    this.onLibraryChanged = onLibraryChanged;
    this.library = [];
    this.pickerFilter = "";
    this.requestId = 0;
    this.previewUrl = null;
    // The query: an image ({file} | {url} | {filename}) or none, the region of it, and the refinement.
    this.image = null;
    this.box = null;
    this.positive = [];
    this.negative = [];
    this.page = 1;
    this.answer = null;
    // The results on screen (after the near-exact filter), in the viewer's order.
    this.results = [];
    this.modes = initTablist(byId("panel-search").querySelector(".modes"), (tab) => {
      byId("add-to-library-option").hidden = tab.id === "mode-library";
    });
    this.picker = byId("picker-grid");
    this.pickerPager = new Pager(byId("picker-pager"), () => this.renderPicker());
    this.region = new RegionSelector(byId("query-stage"), byId("query-box"), (box) => {
      this.box = box;
      this.rerun();
    });
    this.bindUpload();
    this.bindQueryCard();
    this.bindOptions();
    this.bindFilters();
    this.resultsPager = byId("results-pager");
    this.resultsPager.addEventListener("click", (event) => {
      const button = event.target.closest("[data-page]");
      if (!button) return;
      this.page = Math.max(1, this.page + (button.dataset.page === "next" ? 1 : -1));
      this.run({ scroll: true });
    });
    byId("words-form").addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.hasQuery()) {
        this.rerun({ scroll: true });
        return;
      }
      this.clearResults();
      byId("search-status").textContent = "Type a word, or give an image below.";
    });
    byId("url-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const url = byId("query-url").value.trim();
      if (url) this.searchImage({ url });
    });
    byId("picker-filter").addEventListener("input", (event) => {
      this.pickerFilter = event.target.value.trim().toLowerCase();
      this.pickerPager.page = 0;
      this.renderPicker();
    });
    this.examplesChanged();
  }

  bindQueryCard() {
    const queryImage = byId("query-image");
    queryImage.addEventListener("error", () => queryImage.classList.add("broken"));
    queryImage.addEventListener("load", () => queryImage.classList.remove("broken"));
    byId("clear-region").addEventListener("click", () => {
      this.box = null;
      this.rerun();
    });
    byId("remove-query-image").addEventListener("click", () => {
      this.image = null;
      this.box = null;
      this.rerun();
    });
    byId("clear-refinement").addEventListener("click", () => {
      this.positive = [];
      this.negative = [];
      this.rerun();
    });
  }

  bindOptions() {
    byId("result-count").addEventListener("change", () => this.rerun());
    byId("min-similarity").addEventListener("change", () => {
      byId("min-similarity").value = String(Math.round(this.minSimilarity() * 1000) / 10);
      this.rerun();
    });
    // A display filter only: the results already in hand are re-rendered, the server is not asked again.
    byId("hide-near-exact").addEventListener("change", () => {
      if (this.answer) this.renderResults();
    });
  }

  bindFilters() {
    const form = byId("filters-form");
    form.addEventListener("submit", (event) => event.preventDefault());
    form.addEventListener("change", () => this.filtersChanged());
    // "reset" comes before the fields are emptied.
    form.addEventListener("reset", () => setTimeout(() => this.filtersChanged()));
  }

  filtersChanged() {
    const active = Object.keys(this.filters()).length;
    byId("filters-active").textContent = active ? `(${active} on)` : "";
    this.rerun();
  }

  /** The global "show the bundled examples" choice changed: it decides the source filter when it hides them. */
  examplesChanged() {
    const source = byId("filter-source");
    source.disabled = examplesHidden();
    source.title = source.disabled ? "The bundled examples are hidden (the switch at the top)." : "";
    if (this.hasQuery()) this.rerun();
  }

  /** The filters as the API names them, only those set. */
  filters() {
    const values = Object.fromEntries(new FormData(byId("filters-form")));
    if (examplesHidden()) values.source = "uploads";
    return Object.fromEntries(FILTER_NAMES.filter((name) => values[name]?.trim()).map((name) => [name, values[name].trim()]));
  }

  /** The minimum-similarity box as a 0..1 fraction; anything unreadable counts as 0 (off). */
  minSimilarity() {
    const value = byId("min-similarity").valueAsNumber;
    return Number.isFinite(value) ? Math.max(0, Math.min(100, value)) / 100 : 0;
  }

  words() {
    return byId("query-words").value.trim();
  }

  hasQuery() {
    return Boolean(this.image || this.words() || this.positive.length);
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
    return this.searchImage({ filename: name });
  }

  /** A new query image: its region and the refinement of the last one no longer apply. */
  searchImage(image) {
    this.image = image;
    this.box = null;
    this.positive = [];
    this.negative = [];
    this.page = 1;
    const addToLibrary = !image.filename && byId("add-to-library").checked;
    return this.run({ addToLibrary, scroll: true });
  }

  /** The same query with what the user just changed (words, region, refinement, filters, options), from page 1. */
  rerun({ scroll = false } = {}) {
    this.page = 1;
    return this.run({ scroll });
  }

  /** kind: "positive" ("more like this") or "negative" ("less like this"). */
  refine(name, kind) {
    const other = kind === "positive" ? "negative" : "positive";
    this[other] = this[other].filter((each) => each !== name);
    if (!this[kind].includes(name)) this[kind] = [...this[kind], name];
    this.rerun();
  }

  unrefine(name) {
    this.positive = this.positive.filter((each) => each !== name);
    this.negative = this.negative.filter((each) => each !== name);
    this.rerun();
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
      if (file) this.searchImage({ file });
    });
    bindDropTarget(zone, ([file]) => this.searchImage({ file }), (url) => {
      this.setMode("url");
      byId("query-url").value = url;
      this.searchImage({ url });
    });
    document.addEventListener("paste", (event) => {
      if (byId("panel-search").hidden || document.querySelector("dialog[open]")) return;
      const file = [...(event.clipboardData?.files || [])].find((item) => item.type.startsWith("image/"));
      if (!file) return;
      event.preventDefault();
      this.setMode("upload");
      this.searchImage({ file });
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
    const current = this.image?.filename;
    this.picker.append(...names.slice(start, end).map((name) => {
      const button = el("button", {
        type: "button", class: "card-thumb", "aria-label": `Search with ${name}`, title: name,
        "aria-pressed": name === current ? "true" : "false",
      }, lazyImage(thumbUrl(name), name));
      button.addEventListener("click", () => this.searchImage({ filename: name }));
      return el("li", { class: "card picker-item", "data-filename": name }, button,
        el("span", { class: "card-name" }, name));
    }));
  }

  query() {
    return {
      ...this.image, text: this.words(), box: this.image ? this.box : null,
      positive: this.positive, negative: this.negative, filters: this.filters(),
    };
  }

  async run({ addToLibrary = false, scroll = false } = {}) {
    const status = byId("search-status");
    const resultsBox = byId("search-results");
    if (!this.hasQuery()) {
      this.clearResults();
      return;
    }
    const id = ++this.requestId;
    const query = this.query();
    const k = Number(byId("result-count").value) || 6;
    const minSimilarity = this.minSimilarity();
    status.classList.remove("error");
    status.replaceChildren(el("span", { class: "spinner", "aria-hidden": "true" }), "Searching…");
    resultsBox.setAttribute("aria-busy", "true");
    this.markPicked();

    let data;
    try {
      data = await search(query, { k, page: this.page, addToLibrary, minSimilarity });
    } catch (error) {
      if (id !== this.requestId) return;
      resultsBox.removeAttribute("aria-busy");
      status.classList.add("error");
      status.textContent = `Search failed: ${error.message}`;
      if (isUnknownWords(error)) {
        // The words are the problem: offer the closest ones where they were typed.
        byId("words-info").replaceChildren(...suggestionButtons(error.message, error.data.suggestions, (word) => {
          byId("query-words").value = word;
          this.rerun({ scroll: true });
        }));
      } else {
        toastError(error);
      }
      return;
    }
    if (id !== this.requestId) return;
    resultsBox.removeAttribute("aria-busy");
    const answered = data.query || {};
    this.answer = {
      results: data.results || [],
      minSimilarity,
      // Words alone rank by tag probability, not by likeness to an image.
      byWords: data.metric === "tags",
      reranked: Boolean(data.reranked),
      hasMore: Boolean(data.has_more),
      about: `for ${this.describe(query)}${data.model ? ` (${data.model}, ${data.metric})` : ""}`,
    };
    byId("words-info").replaceChildren(...(answered.text ? matchedWords(answered.text) : []));
    this.showQuery(query, answered);
    this.renderRefinement();
    this.renderResults();
    if (scroll) this.bringResultsIntoView();
    if (addToLibrary) this.reportAdded(answered);
  }

  /** Nothing left to search with (the last words, image or marks were taken away): no results either. */
  clearResults() {
    this.requestId += 1;
    this.answer = null;
    byId("search-results").hidden = true;
    byId("words-info").replaceChildren();
    byId("search-status").classList.remove("error");
    byId("search-status").textContent = "";
    this.markPicked();
  }

  /** On a phone the results start below the search controls: bring them up rather than leave them unseen. */
  bringResultsIntoView() {
    const first = byId("results-grid").firstElementChild || byId("results-empty");
    const rect = first.getBoundingClientRect();
    if (rect.top < 0 || rect.bottom > window.innerHeight) byId("search-status").scrollIntoView({ block: "start" });
  }

  reportAdded(answered) {
    if (!answered.filename) {
      showToast("The search ran, but the server did not add the query image to the library.", "info");
      return;
    }
    if (answered.already_in_library) {
      showToast(`The query image is already in the library as ${answered.filename}; nothing was added.`, "info");
    } else {
      showToast(`Added ${answered.filename} to the library.`, "success");
    }
    // Now a library image: searching again must leave it out of its own results.
    this.image = { filename: answered.filename };
    this.onLibraryChanged();
  }

  describe(query) {
    const parts = [];
    if (query.file) parts.push(query.file.name || "the pasted image");
    else if (query.url) parts.push(query.url);
    else if (query.filename) parts.push(query.filename);
    if (query.box) parts.push("a region of it");
    if (query.text) parts.push(`“${query.text}”`);
    if (query.positive.length) parts.push(`more like ${formatCount(query.positive.length, "image")}`);
    if (query.negative.length) parts.push(`less like ${formatCount(query.negative.length, "image")}`);
    return parts.join(", ");
  }

  markPicked() {
    const name = this.image?.filename;
    this.picker.querySelectorAll("[aria-pressed]").forEach((button) => {
      button.setAttribute("aria-pressed", button.closest("li").dataset.filename === name ? "true" : "false");
    });
  }

  showQuery(query, answered) {
    const img = byId("query-image");
    const hasImage = Boolean(this.image);
    byId("query-stage").hidden = !hasImage;
    byId("query-words-shown").hidden = hasImage;
    byId("region-hint").hidden = !hasImage;
    byId("remove-query-image").hidden = !hasImage || !(query.text || query.positive.length);
    byId("clear-region").hidden = !query.box;
    this.region.setEnabled(hasImage);
    this.region.show(query.box || null);
    if (!hasImage) {
      byId("query-kind").textContent = query.text ? "Words" : "More like";
      byId("query-words-shown").textContent = query.text ? `“${query.text}”` : this.describe(query);
      byId("query-caption").textContent = "";
      return;
    }
    byId("query-kind").textContent = query.box ? "Query region" : "Query";
    const src = query.file ? this.filePreview(query.file)
      : query.url ? answered.image_url || query.url
        : answered.image_url || imageUrl(query.filename);
    if (img.getAttribute("src") !== src) {
      img.classList.remove("broken");
      img.src = src;
    }
    const name = query.file ? query.file.name || "the pasted image" : query.url || query.filename;
    img.alt = `Query image: ${name}`;
    byId("query-caption").textContent = name;
    byId("query-caption").title = name;
  }

  /** One object URL per query file, released when another file takes its place. */
  filePreview(file) {
    if (this.previewFile !== file) {
      if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
      this.previewFile = file;
      this.previewUrl = URL.createObjectURL(file);
    }
    return this.previewUrl;
  }

  renderRefinement() {
    byId("refinement").hidden = !this.positive.length && !this.negative.length;
    for (const [kind, names, label] of [["positive", this.positive, "more like"], ["negative", this.negative, "less like"]]) {
      const box = byId(`refine-${kind}`);
      box.hidden = names.length === 0;
      const list = box.querySelector("ul");
      clearLazy(list);
      list.append(...names.map((name) => {
        const remove = el("button", {
          type: "button", class: "refine-remove", "aria-label": `Stop searching ${label} ${name}`, title: `Remove ${name}`,
        }, lazyImage(thumbUrl(name), name), icon("i-close", "icon refine-x"));
        remove.addEventListener("click", () => this.unrefine(name));
        return el("li", { "data-filename": name }, remove);
      }));
    }
  }

  /** Shows the last answer, less the near-exact copies when the user hides them. */
  renderResults() {
    const { results, minSimilarity, about, byWords, reranked, hasMore } = this.answer;
    // Near-exact copies are a matter of likeness to a query image; a probability of words is not that.
    const hide = byId("hide-near-exact").checked && !byWords;
    const visible = hide ? results.filter((result) => result.similarity < NEAR_EXACT_SIMILARITY) : results;
    const hidden = results.length - visible.length;
    this.results = visible;

    const notes = [`${formatCount(visible.length, "match", "matches")} ${about}`];
    if (minSimilarity > 0) notes.push(`${percentLabel(minSimilarity)} ${byWords ? "likely" : "similar"} or more`);
    if (hidden) notes.push(`${formatCount(hidden, "near-exact copy", "near-exact copies")} hidden`);
    const filters = Object.keys(this.filters()).length;
    if (filters) notes.push(`${formatCount(filters, "filter")} on`);
    if (this.page > 1) notes.push(`page ${this.page}`);
    byId("search-status").textContent = notes.join(" · ");

    const empty = byId("results-empty");
    empty.hidden = visible.length > 0;
    empty.textContent = this.emptyText(results.length, minSimilarity);
    byId("search-results").hidden = false;
    byId("reranked-note").hidden = !reranked;
    byId("results-heading").textContent = visible.length
      ? `${this.page > 1 ? "Matches" : "Top"} ${formatCount(visible.length, "match", "matches")}`
      : "Top matches";
    const grid = byId("results-grid");
    grid.dataset.count = String(visible.length);
    clearLazy(grid);
    grid.append(...visible.map((result, index) => this.resultCard(result, index, byWords)));

    this.resultsPager.hidden = this.page === 1 && !hasMore;
    this.resultsPager.querySelector(".pager-label").textContent = `Page ${this.page}`;
    this.resultsPager.querySelector('[data-page="prev"]').disabled = this.page === 1;
    this.resultsPager.querySelector('[data-page="next"]').disabled = !hasMore;
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
    if (this.page > 1) return "No more matches.";
    if (Object.keys(this.filters()).length) return "No image matches the filters. Clear some of them to see more.";
    if (this.words()) return "No image in the library carries all of these words.";
    return "No matches. Add images to the library or generate their features first.";
  }

  resultCard(result, index, byWords) {
    const name = result.filename;
    const score = percent(result.similarity);
    const scoreText = byWords ? `${score} likely` : `${score} similar`;
    const view = el("button", {
      type: "button", class: "card-thumb", "aria-label": `View ${name}, ${scoreText}`,
    }, lazyImage(result.thumb_url || thumbUrl(name), name));
    view.addEventListener("click", () => this.openResult(index));

    const action = (iconId, label, title, onClick) => {
      const button = el("button", { type: "button", class: "icon-btn", "aria-label": `${label} ${name}`, title },
        icon(iconId));
      button.addEventListener("click", onClick);
      return button;
    };
    const actions = el("div", { class: "card-actions" },
      action("i-search", "Find similar to", "Find similar", () => this.searchImage({ filename: name })),
      action("i-plus", "More like", "More like this", () => this.refine(name, "positive")),
      action("i-minus", "Less like", "Less like this", () => this.refine(name, "negative")));

    const badges = el("div", { class: "card-badges" },
      el("span", { class: "badge badge-score", title: byWords ? "How sure the tagger is of these words" : "" }, score));
    if (result.is_original) badges.append(el("span", { class: "badge badge-original" }, "Original"));

    const meter = el("span", { class: "meter", "aria-hidden": "true" }, el("span", { class: "meter-fill" }));
    meter.firstChild.style.width = score;

    return el("li", { class: "card result", "data-filename": name }, view, badges, meter,
      el("div", { class: "card-footer result-footer" }, el("span", { class: "card-name", title: name }, name), actions));
  }

  openResult(index) {
    const byWords = this.answer?.byWords;
    openViewer(this.results.map((result) => libraryItem(result.filename,
      `${percent(result.similarity)} ${byWords ? "likely" : "similar"}${result.is_original ? " · Original" : ""}`)), index);
  }
}
