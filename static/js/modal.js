// The full-size image viewer and the two small dialogs (confirmation, access token), all native <dialog>s.
import { imageInfo, imageUrl } from "./api.js";
import { el } from "./dom.js";

const byId = (id) => document.getElementById(id);

let viewerItems = [];
let viewerIndex = 0;
let viewerReturnFocus = null;
let detailsRequest = 0;

/** A viewer item for a library image: its tags and facts are fetched when it is shown. */
export function libraryItem(name, meta) {
  return { src: imageUrl(name), title: name, meta, filename: name };
}

function sizeLabel(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(bytes / 1024))} kB`;
}

/** The image's tags with their probabilities, its type, size and date taken (GET /api/image/<name>). */
async function showDetails(item) {
  const box = byId("viewer-details");
  const request = ++detailsRequest;
  box.replaceChildren();
  if (!item.filename) return;
  let info;
  try {
    info = await imageInfo(item.filename);
  } catch {
    return;  // the picture itself still shows; the details are extra
  }
  if (request !== detailsRequest) return;
  const facts = [info.type?.toUpperCase(), info.size ? sizeLabel(info.size) : null,
    info.taken_at ? `taken ${info.taken_at.slice(0, 10)}` : null].filter(Boolean);
  const tags = info.tags || [];
  box.replaceChildren(el("p", { class: "muted" }, facts.join(" · ")));
  if (tags.length) {
    box.append(el("div", { class: "tag-row" }, el("span", { class: "muted" }, "Tags"),
      el("ul", { class: "chips", "aria-label": "Tags" }, ...tags.map((tag) => el("li", { class: "chip" },
        tag.name, el("span", { class: "chip-score" }, `${Math.round(tag.probability * 100)}%`))))));
  }
}

function showViewerItem() {
  const item = viewerItems[viewerIndex];
  const img = byId("viewer-image");
  img.classList.remove("broken");
  img.src = item.src;
  img.alt = item.title;
  byId("viewer-title").textContent = item.title;
  byId("viewer-meta").textContent = item.meta || "";
  byId("viewer-position").textContent = viewerItems.length > 1 ? `${viewerIndex + 1} / ${viewerItems.length}` : "";
  showDetails(item);
  // Warm the cache for the neighbours so arrowing through feels instant.
  for (const step of [-1, 1]) {
    const neighbour = viewerItems[(viewerIndex + step + viewerItems.length) % viewerItems.length];
    if (neighbour && neighbour !== item) new Image().src = neighbour.src;
  }
}

function stepViewer(step) {
  if (viewerItems.length < 2) return;
  viewerIndex = (viewerIndex + step + viewerItems.length) % viewerItems.length;
  showViewerItem();
}

/** items: [{src, title, meta, filename?}]; opens at `index`. ArrowLeft/ArrowRight move, Esc closes. */
export function openViewer(items, index = 0) {
  const dialog = byId("viewer");
  viewerItems = items;
  viewerIndex = index;
  dialog.classList.toggle("single", items.length < 2);
  showViewerItem();
  if (!dialog.open) {
    viewerReturnFocus = document.activeElement;
    dialog.showModal();
  }
}

export function initModals() {
  const viewer = byId("viewer");
  byId("viewer-close").addEventListener("click", () => viewer.close());
  byId("viewer-prev").addEventListener("click", () => stepViewer(-1));
  byId("viewer-next").addEventListener("click", () => stepViewer(1));
  byId("viewer-image").addEventListener("error", (event) => event.target.classList.add("broken"));
  // On the document: focus may sit on <body> after an image swap, and arrow keys must still work.
  document.addEventListener("keydown", (event) => {
    if (!viewer.open || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft") stepViewer(-1);
    else if (event.key === "ArrowRight") stepViewer(1);
    else return;
    event.preventDefault();
  });
  // A click on the backdrop (outside the dialog box) closes it.
  viewer.addEventListener("click", (event) => {
    if (event.target === viewer) viewer.close();
  });
  viewer.addEventListener("close", () => {
    byId("viewer-image").removeAttribute("src");
    detailsRequest += 1;
    if (viewerReturnFocus && viewerReturnFocus.isConnected) viewerReturnFocus.focus();
    viewerReturnFocus = null;
  });
}

function runFormDialog(dialog, onClose) {
  return new Promise((resolve) => {
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(onClose(dialog.returnValue)), { once: true });
    dialog.showModal();
  });
}

/** Resolves to true when the user confirms. */
export function confirmDialog({ title, message, confirmLabel }) {
  const dialog = byId("confirm-dialog");
  byId("confirm-title").textContent = title;
  byId("confirm-message").textContent = message;
  byId("confirm-ok").textContent = confirmLabel;
  return runFormDialog(dialog, (value) => value === "confirm");
}

/** Resolves to the token the user typed, or null when they cancel. */
export function askForToken() {
  const dialog = byId("token-dialog");
  const input = byId("token-input");
  input.value = "";
  return runFormDialog(dialog, (value) => (value === "ok" && input.value.trim()) || null);
}
