// The Gallery tab: uploads, the paged thumbnail grid, selection and deletion.
import { deleteImage, deleteImages, imageUrl, thumbUrl, uploadFile } from "./api.js";
import { Pager, bindDropTarget, clearLazy, el, formatCount, icon, lazyImage } from "./dom.js";
import { confirmDialog, openViewer } from "./modal.js";
import { showToast, toastError } from "./toast.js";

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
  }

  /** data: the /api/images answer. */
  setData({ images = [], original_images: originals = [], pending = [] }) {
    // Refreshes that change nothing must not rebuild the grid (and drop keyboard focus).
    const signature = JSON.stringify([images, originals, pending]);
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
    byId("gallery-count").textContent = this.loaded
      ? `(${formatCount(this.images.length, "image")}, ${userCount.toLocaleString()} yours)`
      : "";
    byId("gallery-empty").hidden = !this.loaded || this.images.length > 0;
    byId("gallery-no-match").hidden = this.images.length === 0 || visible.length > 0;
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
    openViewer(this.pageImages.map((name) => ({
      src: imageUrl(name),
      title: name,
      meta: this.originals.has(name) ? "Original" : "Your upload",
    })), index);
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
          added.push(result.filename || file.name);
          row.finish();
        } catch (error) {
          row.fail(error.message);
          showToast(`${file.name}: ${error.message}`, "error");
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL_UPLOADS, jobs.length) }, worker));

    if (added.length === 1) showToast(`Added ${added[0]} to the library.`, "success");
    else if (added.length > 1) showToast(`Added ${formatCount(added.length, "image")} to the library.`, "success");
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
    finish() {
      item.classList.add("done");
      progress.value = 1;
      state.replaceChildren(icon("i-check"), "Added");
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
