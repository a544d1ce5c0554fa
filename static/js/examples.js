// Whether the bundled example photographs are shown: one choice for the gallery, the picker and the
// results, remembered in this browser.

const KEY = "imgsearch.hideExamples";

export function examplesHidden() {
  return localStorage.getItem(KEY) === "1";
}

export function setExamplesHidden(hidden) {
  if (hidden) localStorage.setItem(KEY, "1");
  else localStorage.removeItem(KEY);
}

/** The `source` filter the choice asks of the server: only the user's own images, or no restriction. */
export function sourceFilter() {
  return examplesHidden() ? "uploads" : null;
}
