// The Gallery tab: uploads, the paged thumbnail grid, selection and deletion.
import { deleteImage, deleteImages, listImages, thumbUrl, uploadFile } from "./api.js";
import { Pager, bindDropTarget, clearLazy, el, formatCount, icon, lazyImage } from "./dom.js";
import { confirmDialog, libraryItem, openViewer } from "./modal.js";
import { showToast, toastError } from "./toast.js";
import { isUnknownWords, suggestionButtons } from "./words.js";

// Paging keeps the DOM small however large the library grows.
const PAGE_SIZE = 200;
const PARALLEL_UPLOADS = 2;
const DONE_ITEM_LINGER_MS = 2500;

const byId = (id) => document.getElementById(id);

export class Gallery {
  constructor({ onFindSimilar, onChanged }) {
    this.onFindSimilar = onFindSimilar;
    this.onChanged = onChanged;
    this.images = [];
    this.originals = new Set();
    this.pending = new Set();
    this.selected = new Set();
    this.pageImages = [];
    this.filter = "";
    this.tag = "";
    this.source = null;
    this.listing = null;
    this.loaded = false;
    this.grid = byId("gallery-grid");
    this.pager = new Pager(byId("gallery-pager"), () => {
      this.render();
      this.grid.scrollIntoView({ block: "start" });
    });
    this.bindUploads();
    this.bindSelection();
    byId("gallery-filter").addEventListener("input", (event) => {
      this.filter = event.target.value.trim().toLowerCase();
      this.pager.page = 0;
      this.render();
    });
    // "change" fires on Enter, on picking a suggestion and on leaving the field: not on every key.
    byId("gallery-tag").addEventListener("change", (event) => this.filterByTag(event.target.value));
  }

  /**
   * listing: the /api/images answer for `source` (null: every image, "uploads": the user's own). With a
   * tag filter the gallery asks for its own, narrower listing. Resolves once the grid is up to date.
   */
  async setData(listing, source = null) {
    this.listing = listing;
    this.source = source;
    if (!this.tag) {
      this.show(listing);
      return;
    }
    const tag = this.tag;
    try {
      const tagged = await listImages({ source, tag });
      if (tag === this.tag) this.show(tagged);
    } catch (error) {
      if (tag !== this.tag) return;
      this.show({ images: [] });
      const status = byId("gallery-tag-status");
      status.hidden = false;
      status.classList.add("error");
      status.replaceChildren(...(isUnknownWords(error)
        ? suggestionButtons(error.message, error.data.suggestions, (word) => {
          byId("gallery-tag").value = word;
          this.filterByTag(word);
        })
        : [`Could not filter by tag: ${error.message}`]));
    }
  }

  filterByTag(value) {
    const tag = value.trim();
    if (tag === this.tag) return;
    this.tag = tag;
    this.pager.page = 0;
    const status = byId("gallery-tag-status");
    status.hidden = true;
    status.classList.remove("error");
    status.replaceChildren();
    if (this.listing) this.setData(this.listing, this.source);
  }

  show({ images = [], original_images: originals = [], pending = [] }) {
    // Refreshes that change nothing must not rebuild the grid (and drop keyboard focus).
    const signature = JSON.stringify([images, originals, pending, this.tag, this.source]);
    if (signature === this.signature) return;
    this.signature = signature;
    this.images = images;
    this.originals = new Set(originals);
    this.pending = new Set(pending);
    this.loaded = true;
    const present = new Set(images);
    for (const name of this.selected) if (!present.has(name)) this.selected.delete(name);
    this.render();
  }

  visibleImages() {
    if (!this.filter) return this.images;
    return this.images.filter((name) => name.toLowerCase().includes(this.filter));
  }

  render() {
    const visible = this.visibleImages();
    const userCount = this.images.length - this.originals.size;
    let count = "";
    if (this.tag) count = `(${formatCount(this.images.length, "image")} tagged “${this.tag}”)`;
    else if (this.source === "uploads") count = `(${formatCount(this.images.length, "image")} of yours)`;
    else if (this.loaded) count = `(${formatCount(this.images.length, "image")}, ${userCount.toLocaleString()} yours)`;
    byId("gallery-count").textContent = count;
    byId("gallery-empty").hidden = !this.loaded || this.images.length > 0 || Boolean(this.tag);
    byId("gallery-empty-title").textContent = this.source === "uploads"
      ? "No images of your own yet (the bundled examples are hidden)"
      : "Your library is empty";
    const noMatch = byId("gallery-no-match");
    noMatch.hidden = !this.loaded || visible.length > 0 || (this.images.length === 0 && !this.tag);
    noMatch.textContent = this.images.length
      ? "No image name matches the filter."
      : `No image is tagged “${this.tag}”.`;
    const [start, end] = this.pager.update(visible.length, PAGE_SIZE);
    this.pageImages = visible.slice(start, end);
    const focus = this.focusedControl();
    clearLazy(this.grid);
    this.grid.append(...this.pageImages.map((name, index) => this.card(name, index)));
    this.updateSelectionBar();
    if (focus) this.restoreFocus(focus);
  }

  /** Which card control has focus, so a re-render can put it back (or on the next card if it went away). */
  focusedControl() {
    const active = document.activeElement;
    const item = active && this.grid.contains(active) ? active.closest("li") : null;
    if (!item) return null;
    const index = [...this.grid.children].indexOf(item);
    return { name: item.dataset.filename, label: active.getAttribute("aria-label"), index };
  }

  restoreFocus({ name, label, index }) {
    const item = [...this.grid.children].find((li) => li.dataset.filename === name);
    const same = item && [...item.querySelectorAll("[aria-label]")]
      .find((node) => node.getAttribute("aria-label") === label);
    const fallback = this.grid.children[Math.min(index, this.grid.children.length - 1)];
    const target = same || (fallback && fallback.querySelector(".card-thumb"));
    if (target) target.focus({ preventScroll: true });
  }

  card(name, index) {
    const original = this.originals.has(name);
    const item = el("li", { class: "card", "data-filename": name });
    item.classList.toggle("is-original", original);
    item.classList.toggle("is-selected", this.selected.has(name));

    const view = el("button", { type: "button", class: "card-thumb", "aria-label": `View ${name}` },
      lazyImage(thumbUrl(name), name));
    view.addEventListener("click", () => this.openViewerAt(index));
    item.append(view);

    const badges = el("div", { class: "card-badges" });
    if (original) badges.append(el("span", { class: "badge badge-original" }, "Original"));
    if (this.pending.has(name)) {
      badges.append(el("span", { class: "badge badge-pending", title: "Features not generated yet" },
        icon("i-clock"), "Pending"));
    }
    item.append(badges);

    if (!original) {
      const box = el("input", { type: "checkbox", class: "card-select", "aria-label": `Select ${name}` });
      box.checked = this.selected.has(name);
      box.addEventListener("change", () => {
        if (box.checked) this.selected.add(name);
        else this.selected.delete(name);
        item.classList.toggle("is-selected", box.checked);
        this.updateSelectionBar();
      });
      item.append(box);
    }

    const actions = el("div", { class: "card-actions" });
    const similar = el("button", {
      type: "button", class: "icon-btn", "aria-label": `Find similar to ${name}`, title: "Find similar",
    }, icon("i-search"));
    similar.addEventListener("click", () => this.onFindSimilar(name));
    actions.append(similar);
    if (!original) {
      const remove = el("button", {
        type: "button", class: "icon-btn danger", "aria-label": `Delete ${name}`, title: "Delete",
      }, icon("i-trash"));
      remove.addEventListener("click", () => this.deleteOne(name));
      actions.append(remove);
    }
    item.append(el("div", { class: "card-footer" }, el("span", { class: "card-name", title: name }, name), actions));
    return item;
  }

  openViewerAt(index) {
    openViewer(this.pageImages.map((name) => libraryItem(name, this.originals.has(name) ? "Original" : "Your upload")),
      index);
  }

  // ---- uploads

  bindUploads() {
    const zone = byId("upload-zone");
    const input = byId("upload-input");
    zone.addEventListener("click", (event) => {
      if (event.target !== input) input.click();
    });
    input.addEventListener("change", () => {
      const files = [...input.files];
      input.value = "";
      this.upload(files);
    });
    bindDropTarget(zone, (files) => this.upload(files));
  }

  async upload(files) {
    if (!files.length) return;
    const list = byId("upload-list");
    list.querySelectorAll(".upload-item.failed").forEach((node) => node.remove());
    const jobs = files.map((file) => ({ file, row: uploadRow(file.name) }));
    list.append(...jobs.map((job) => job.row.item));

    const added = [];
    const known = [];
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) {
        const { file, row } = jobs[next++];
        row.setState("Uploading…");
        try {
          const result = await uploadFile(file, (fraction) => {
            row.progress.value = fraction;
            if (fraction >= 1) row.setState("Indexing…");
          });
          const name = result.filename || file.name;
          // The same bytes were stored before: nothing new was added, and the user should know under which name.
          if (result.already_in_library) {
            known.push({ upload: file.name, name });
            row.finish(`Already in the library as ${name}`);
          } else {
            added.push(name);
            row.finish("Added");
          }
        } catch (error) {
          row.fail(error.message);
          showToast(`${file.name}: ${error.message}`, "error");
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL_UPLOADS, jobs.length) }, worker));

    if (added.length === 1) showToast(`Added ${added[0]} to the library.`, "success");
    else if (added.length > 1) showToast(`Added ${formatCount(added.length, "image")} to the library.`, "success");
    if (known.length === 1) {
      showToast(`${known[0].upload} is already in the library as ${known[0].name}; nothing was added.`, "info");
    } else if (known.length > 1) {
      showToast(`${formatCount(known.length, "image")} already in the library; nothing was added for them.`, "info");
    }
    if (added.length) this.onChanged();
  }

  // ---- selection and deletion

  bindSelection() {
    byId("select-page-button").addEventListener("click", () => {
      for (const name of this.pageImages) if (!this.originals.has(name)) this.selected.add(name);
      this.render();
    });
    byId("clear-selection-button").addEventListener("click", () => {
      this.selected.clear();
      this.render();
    });
    byId("delete-selected-button").addEventListener("click", () => this.deleteSelected());
  }

  updateSelectionBar() {
    const count = this.selected.size;
    byId("selection-count").textContent = count ? `${formatCount(count, "image")} selected` : "No images selected";
    byId("delete-selected-button").disabled = count === 0;
    byId("clear-selection-button").disabled = count === 0;
    const selectable = this.pageImages.some((name) => !this.originals.has(name) && !this.selected.has(name));
    byId("select-page-button").disabled = !selectable;
    // Originals cannot be deleted, so a library of only originals has nothing to select.
    byId("selection-bar").hidden = this.images.length === this.originals.size && count === 0;
  }

  async deleteOne(name) {
    const confirmed = await confirmDialog({
      title: "Delete this image?",
      message: `${name} will be removed from the library and from search results. This cannot be undone.`,
      confirmLabel: "Delete",
    });
    if (!confirmed) return;
    try {
      await deleteImage(name);
      this.selected.delete(name);
      showToast(`Deleted ${name}.`, "success");
    } catch (error) {
      toastError(error);
    }
    this.onChanged();
  }

  async deleteSelected() {
    const names = [...this.selected];
    if (!names.length) return;
    const confirmed = await confirmDialog({
      title: `Delete ${formatCount(names.length, "image")}?`,
      message: names.length === 1
        ? `${names[0]} will be removed from the library and from search results. This cannot be undone.`
        : `The ${names.length} selected images will be removed from the library and from search results. `
          + "This cannot be undone.",
      confirmLabel: `Delete ${formatCount(names.length, "image")}`,
    });
    if (!confirmed) return;
    try {
      const result = await deleteImages(names);
      const deleted = result.deleted || names;
      deleted.forEach((name) => this.selected.delete(name));
      showToast(`Deleted ${formatCount(deleted.length, "image")}.`, "success");
    } catch (error) {
      toastError(error);
    }
    this.onChanged();
  }
}

function uploadRow(name) {
  const progress = el("progress", { max: "1", value: "0", "aria-label": `Upload progress of ${name}` });
  const state = el("span", { class: "upload-state muted" }, "Waiting");
  const label = el("span", { class: "card-name", title: name }, name);
  const item = el("li", { class: "upload-item" }, label, progress, state);
  return {
    item,
    progress,
    setState(text) {
      state.textContent = text;
    },
    finish(message) {
      item.classList.add("done");
      progress.value = 1;
      state.replaceChildren(icon("i-check"), message);
      setTimeout(() => item.remove(), DONE_ITEM_LINGER_MS);
    },
    fail(message) {
      item.classList.add("failed");
      state.textContent = message;
      const dismiss = el("button", { type: "button", class: "icon-btn", "aria-label": `Dismiss ${name}` },
        icon("i-close"));
      dismiss.addEventListener("click", () => item.remove());
      item.append(dismiss);
    },
  };
}
