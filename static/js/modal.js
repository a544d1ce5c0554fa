// The full-size image viewer and the two small dialogs (confirmation, access token), all native <dialog>s.

const byId = (id) => document.getElementById(id);

let viewerItems = [];
let viewerIndex = 0;
let viewerReturnFocus = null;

function showViewerItem() {
  const item = viewerItems[viewerIndex];
  const img = byId("viewer-image");
  img.classList.remove("broken");
  img.src = item.src;
  img.alt = item.title;
  byId("viewer-title").textContent = item.title;
  byId("viewer-meta").textContent = item.meta || "";
  byId("viewer-position").textContent = viewerItems.length > 1 ? `${viewerIndex + 1} / ${viewerItems.length}` : "";
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

/** items: [{src, title, meta}]; opens at `index`. ArrowLeft/ArrowRight move, Esc closes. */
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
