// The Duplicates tab: groups of near-identical images, which one to keep, and deleting the rest.
import { deleteImages, findDuplicates, thumbUrl } from "./api.js";
import { Pager, clearLazy, el, formatCount, icon, lazyImage, percent } from "./dom.js";
import { confirmDialog, libraryItem, openViewer } from "./modal.js";
import { showToast, toastError } from "./toast.js";

const PER_PAGE = 20;

const byId = (id) => document.getElementById(id);

const thresholdLabel = (threshold) => `${Math.round(threshold * 100)}%`;

export class DuplicatesView {
  /** onLibraryChanged() refreshes the rest of the app after a deletion and resolves when it is done. */
  constructor({ onLibraryChanged }) {
    this.onLibraryChanged = onLibraryChanged;
    this.panel = byId("panel-duplicates");
    this.list = byId("duplicate-groups");
    this.slider = byId("duplicate-threshold");
    // null until the first answer tells us the server's default.
    this.threshold = null;
    this.total = 0;
    this.shownPage = 0;
    this.requestId = 0;
    this.latest = Promise.resolve();
    this.stale = true;
    this.librarySignature = null;
    this.pendingCount = 0;
    this.hasExamples = false;
    // The user's "keep" choice per group (keyed by its members), so reloading a page does not reset it.
    this.keep = new Map();
    this.pager = new Pager(byId("duplicates-pager"), (page) => {
      this.load(page);
      this.panel.scrollIntoView({ block: "start" });
    });
    this.slider.addEventListener("input", () => this.showSliderValue());
    byId("duplicates-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.load(0, Number(this.slider.value));
    });
    this.originalGroups = byId("original-groups");
    this.originalGroups.addEventListener("change", () => this.load(0));
    this.showSliderValue();
  }

  showSliderValue() {
    const label = thresholdLabel(Number(this.slider.value));
    byId("duplicate-threshold-value").textContent = label;
    this.slider.setAttribute("aria-valuetext", label);
  }

  isVisible() {
    return !this.panel.hidden;
  }

  /** Whether the library has bundled examples at all: without them, there is nothing to show or hide. */
  setHasExamples(hasExamples) {
    this.hasExamples = hasExamples;
    this.originalGroups.closest("label").hidden = !hasExamples;
  }

  /** The tab was opened: load the groups unless what is shown still matches the library. */
  show() {
    if (this.stale) this.load();
  }

  /** data: the /api/images answer. A changed library makes the groups out of date. */
  setLibrary({ images = [], pending = [] }) {
    this.pendingCount = pending.length;
    const signature = JSON.stringify(images);
    if (signature === this.librarySignature) return;
    const first = this.librarySignature === null;
    this.librarySignature = signature;
    if (first) return;
    this.stale = true;
    if (this.isVisible()) this.load();
  }

  /** page is 0-based; threshold null asks for the server's default. Resolves once the page is shown. */
  load(page = this.shownPage, threshold = this.threshold) {
    this.latest = this.fetchPage(page, threshold);
    return this.latest;
  }

  async fetchPage(page, threshold) {
    const id = ++this.requestId;
    this.stale = false;
    const status = byId("duplicates-status");
    status.classList.remove("error");
    status.replaceChildren(el("span", { class: "spinner", "aria-hidden": "true" }), "Looking for near-duplicates…");
    this.list.setAttribute("aria-busy", "true");

    let data;
    try {
      data = await findDuplicates({
        threshold, page: page + 1, perPage: PER_PAGE, originalGroups: this.originalGroups.checked,
      });
    } catch (error) {
      if (id !== this.requestId) return;
      this.list.removeAttribute("aria-busy");
      status.classList.add("error");
      status.textContent = `Could not look for duplicates: ${error.message}`;
      this.pager.page = this.shownPage;
      this.pager.update(this.total, PER_PAGE);
      this.stale = true;
      toastError(error);
      return;
    }
    if (id !== this.requestId) return;

    const pages = Math.max(1, Math.ceil(data.total_groups / PER_PAGE));
    // A deletion can empty the last page; show the new last one instead of a blank page.
    if (page >= pages && page > 0) {
      await this.load(pages - 1, data.threshold);
      return;
    }
    this.list.removeAttribute("aria-busy");
    if (this.threshold === null) {
      this.slider.value = String(data.threshold);
      this.showSliderValue();
    }
    this.threshold = data.threshold;
    this.total = data.total_groups;
    this.shownPage = page;
    this.pager.page = page;
    this.pager.update(this.total, PER_PAGE);
    this.render(data.groups || [], page);
  }

  render(groups, page) {
    const first = page * PER_PAGE;
    const notes = [this.total
      ? `${formatCount(this.total, "group")} of images ${thresholdLabel(this.threshold)} similar or more`
      : `No groups at ${thresholdLabel(this.threshold)} similarity or more`];
    if (this.total > PER_PAGE) notes.push(`showing ${first + 1}–${first + groups.length}`);
    // The bundled examples alone say nothing about the user's photos; the server leaves those groups out.
    if (this.hasExamples && !this.originalGroups.checked) notes.push("groups made only of bundled examples are not shown");
    if (this.pendingCount) {
      notes.push(`${formatCount(this.pendingCount, "image")} without features yet ${this.pendingCount === 1 ? "is" : "are"} not compared`);
    }
    byId("duplicates-status").textContent = notes.join(" · ");
    byId("duplicates-empty").hidden = this.total > 0;
    clearLazy(this.list);
    this.list.append(...groups.map((group, index) => this.groupItem(group, first + index)));
  }

  groupItem(group, number) {
    const members = group.members || [];
    const key = members.map((member) => member.filename).join("\n");
    const titleId = `dup-group-${number}`;
    const noteId = `${titleId}-note`;

    const title = el("h3", { id: titleId }, `Group ${number + 1}`,
      el("span", { class: "muted" }, ` · ${formatCount(members.length, "image")}`));
    const best = el("span", { class: "badge badge-score", title: "Similarity of the closest pair in this group" },
      `${percent(group.best_similarity)} best match`);

    const radioName = `keep-${number}`;
    const cards = members.map((member, index) => this.memberCard(member, index, members, radioName));
    const fieldset = el("fieldset", { class: "dup-members" },
      el("legend", { class: "visually-hidden" }, `Image to keep in group ${number + 1}`),
      el("ul", { class: "grid dup-grid" }, ...cards.map((card) => card.item)));

    const note = el("p", { id: noteId, class: "hint dup-note" });
    const remove = el("button", { type: "button", class: "btn btn-danger", "aria-describedby": noteId },
      icon("i-trash"), "Delete the others");
    const item = el("li", { class: "dup-group", "aria-labelledby": titleId },
      el("div", { class: "dup-group-head" }, title, best),
      fieldset,
      el("div", { class: "dup-group-actions" }, note, remove));

    const keptName = () => {
      const chosen = this.keep.get(key);
      return members.some((member) => member.filename === chosen) ? chosen : members[0]?.filename;
    };
    const update = () => {
      const kept = keptName();
      const doomed = deletable(members, kept);
      for (const card of cards) card.show(kept, doomed);
      remove.disabled = doomed.length === 0;
      note.textContent = planText(members, kept, doomed);
    };
    fieldset.addEventListener("change", (event) => {
      this.keep.set(key, event.target.value);
      update();
    });
    remove.addEventListener("click", () => {
      const kept = keptName();
      this.deleteOthers(kept, deletable(members, kept), number, remove);
    });
    update();
    return item;
  }

  memberCard(member, index, members, radioName) {
    const name = member.filename;
    const view = el("button", { type: "button", class: "card-thumb", "aria-label": `View ${name}` },
      lazyImage(member.thumb_url || thumbUrl(name), name));
    view.addEventListener("click", () => openViewer(members.map((each) =>
      libraryItem(each.filename, each.is_original ? "Original" : "Your upload")), index));

    const badges = el("div", { class: "card-badges" });
    if (member.is_original) badges.append(el("span", { class: "badge badge-original" }, "Original"));
    const fate = el("span", { class: "badge dup-fate" });

    const radio = el("input", { type: "radio", name: radioName, value: name });
    const choice = el("label", { class: "keep-choice" }, radio, "Keep this one",
      el("span", { class: "visually-hidden" }, `: ${name}`));
    const item = el("li", { class: "card dup-member", "data-filename": name }, view, badges,
      el("div", { class: "card-badges fate-badges" }, fate),
      el("div", { class: "card-footer" }, el("span", { class: "card-name", title: name }, name)),
      choice);

    return {
      item,
      show(kept, doomed) {
        const isKept = name === kept;
        const isDoomed = doomed.includes(name);
        radio.checked = isKept;
        item.classList.toggle("is-kept", isKept);
        item.classList.toggle("will-delete", isDoomed);
        fate.className = `badge dup-fate ${isKept ? "fate-keep" : isDoomed ? "fate-delete" : "fate-stay"}`;
        fate.replaceChildren(...(isKept ? [icon("i-check"), "Kept"]
          : isDoomed ? [icon("i-trash"), "Will be deleted"] : ["Stays"]));
      },
    };
  }

  async deleteOthers(kept, names, number, button) {
    if (!names.length) return;
    const count = formatCount(names.length, "image");
    const confirmed = await confirmDialog({
      title: `Delete ${count}?`,
      message: `${kept} stays. ${names.length === 1 ? "This is" : "These are"} removed from the library and `
        + `from search results: ${names.join(", ")}. This cannot be undone.`,
      confirmLabel: `Delete ${count}`,
    });
    if (!confirmed) return;
    button.disabled = true;
    try {
      const result = await deleteImages(names);
      const deleted = result.deleted || names;
      showToast(`Deleted ${formatCount(deleted.length, "image")}; kept ${kept}.`, "success");
    } catch (error) {
      toastError(error);
    }
    // The refresh reloads this view through setLibrary when the library changed; otherwise reload here.
    this.stale = true;
    await this.onLibraryChanged();
    if (this.stale) this.load();
    await this.latest;
    this.focusAfterRemoval(number - this.shownPage * PER_PAGE);
  }

  /** The group that was acted on may be gone: focus its successor's choice, or the Find button. */
  focusAfterRemoval(index) {
    const groups = this.list.children;
    const group = groups[Math.max(0, Math.min(index, groups.length - 1))];
    const target = group ? group.querySelector("input[type=radio]:checked") : byId("find-duplicates-button");
    if (target) target.focus();
  }
}

/** Everything in the group except the kept image and the originals, which are never deleted. */
function deletable(members, kept) {
  return members.filter((member) => member.filename !== kept && !member.is_original).map((m) => m.filename);
}

function planText(members, kept, doomed) {
  const sparedOriginals = members.filter((member) => member.filename !== kept && member.is_original).length;
  if (!doomed.length) {
    return sparedOriginals === 1
      ? "Nothing to delete: the other image is an original, and originals are never deleted."
      : "Nothing to delete: the other images are originals, and originals are never deleted.";
  }
  const spared = sparedOriginals ? ` ${formatCount(sparedOriginals, "original")} also ${sparedOriginals === 1 ? "stays" : "stay"}: originals are never deleted.` : "";
  return `Deletes ${formatCount(doomed.length, "image")} and keeps ${kept}.${spared}`;
}
