// Entry point: wires the tabs, the status line and the views, and keeps them in step with the server.
import { getStatus, listImages, listTags, setTokenProvider } from "./api.js";
import { el, formatCount } from "./dom.js";
import { DuplicatesView } from "./duplicates.js";
import { examplesHidden, setExamplesHidden, sourceFilter } from "./examples.js";
import { Gallery } from "./gallery.js";
import { askForToken, initModals } from "./modal.js";
import { FeatureJob } from "./progress.js";
import { SearchView } from "./search.js";
import { initTablist } from "./tabs.js";
import { toastError } from "./toast.js";

const STARTUP_POLL_MS = 1500;
const RECONNECT_MS = 5000;
// Files copied in by hand, and other processes' uploads and deletes, show up without a reload.
const FOLLOW_MS = 3000;
// The fallback notice, once dismissed, stays away for this browser tab.
const NOTICE_DISMISSED_KEY = "imgsearch.fallbackNoticeDismissed";
const byId = (id) => document.getElementById(id);

let refreshInFlight = null;
let refreshAgain = false;
let pollTimer = null;
let serverWasDown = false;
let libraryVersion = null;
let tagsVersion = null;

function statusItem(text, className = "") {
  return el("span", { class: `status-item ${className}`.trim() }, ...text);
}

function renderStatus(status) {
  const line = byId("status-line");
  const startup = status.startup || { state: "ready" };
  const items = [
    statusItem(["Model ", el("strong", {}, status.model)]),
    statusItem(["Metric ", el("strong", {}, status.metric)]),
  ];
  if (startup.state !== "ready") {
    const counter = startup.total ? ` ${startup.current} / ${startup.total}` : "";
    const state = `${startup.state.charAt(0).toUpperCase()}${startup.state.slice(1)}`;
    const spinner = el("span", { class: "spinner", "aria-hidden": "true" });
    items.push(statusItem([spinner, `${state}${counter}…`], "status-busy"));
  } else {
    const total = (status.originals || 0) + (status.user_images || 0);
    items.push(statusItem([`${status.indexed.toLocaleString()} of ${formatCount(total, "image")} indexed`]));
    const unreadable = status.unreadable?.length || 0;
    if (status.pending) items.push(statusItem([`${status.pending.toLocaleString()} pending`], "status-pending"));
    if (unreadable) items.push(statusItem([`${unreadable.toLocaleString()} unreadable`], "status-pending"));
  }
  if (status.switch) {
    // The engine changed: its vectors are computed in the background while the previous engine answers.
    const { from, to, done, total } = status.switch;
    const spinner = el("span", { class: "spinner", "aria-hidden": "true" });
    items.push(statusItem([spinner, `Moving to ${to}: ${done.toLocaleString()} of ${formatCount(total, "image")}; `
      + `searches use ${from} until then`], "status-busy"));
  }
  if (status.index?.consistent === false) {
    items.push(statusItem(["index out of step: press Generate Features"], "status-pending"));
  }
  line.replaceChildren(...items);
  const features = `${status.dimension}-dimensional features`;
  line.title = `Weights: ${status.weights} · ${features} · index: ${status.index?.backend ?? "unknown"}`;

  renderFallbackNotice(status);
  // Nothing to hide in a library without bundled examples (unless they were hidden before they went).
  byId("examples-switch").hidden = !status.originals && !examplesHidden();
  duplicatesView.setHasExamples(status.originals > 0);
}

/** Which model searches and why, in words; the raw reason stays in /api/status and the log. */
function renderFallbackNotice(status) {
  const notice = byId("fallback-notice");
  notice.hidden = !status.fallback || sessionStorage.getItem(NOTICE_DISMISSED_KEY) === "1";
  if (notice.hidden) return;
  notice.querySelectorAll(".fallback-model").forEach((node) => { node.textContent = status.model; });
  notice.querySelectorAll(".fallback-wanted").forEach((node) => { node.textContent = status.configured_model; });
}

/** The tags in use, as suggestions for the tag filters; asked again only when the library changed. */
async function refreshTags(status) {
  const tagging = Boolean(status.tags);
  byId("gallery-tag").hidden = !tagging;
  byId("filter-tag-field").hidden = !tagging;
  if (!tagging || tagsVersion === status.library_version) return;
  tagsVersion = status.library_version;
  try {
    const { tags = [] } = await listTags();
    byId("tag-options").replaceChildren(...tags.map((tag) => el("option", { value: tag.name },
      `${tag.name} (${tag.count.toLocaleString()})`)));
  } catch {
    tagsVersion = null;  // asked again on the next refresh
  }
}

async function refresh() {
  if (refreshInFlight) {
    refreshAgain = true;
    return refreshInFlight;
  }
  refreshInFlight = (async () => {
    do {
      refreshAgain = false;
      try {
        const source = sourceFilter();
        const [status, images] = await Promise.all([getStatus(), listImages({ source })]);
        serverWasDown = false;
        libraryVersion = status.library_version;
        renderStatus(status);
        refreshTags(status);
        await gallery.setData(images, source);
        searchView.setLibrary(images);
        duplicatesView.setLibrary(images);
        if (status.job && status.job.running && !featureJob.running) featureJob.run({ start: false });
        clearTimeout(pollTimer);
        if (status.startup && status.startup.state !== "ready") pollTimer = setTimeout(refresh, STARTUP_POLL_MS);
      } catch (error) {
        byId("status-line").textContent = `Cannot reach the server: ${error.message}`;
        if (!serverWasDown) toastError(error);
        serverWasDown = true;
        clearTimeout(pollTimer);
        pollTimer = setTimeout(refresh, RECONNECT_MS);
      }
    } while (refreshAgain);
  })().finally(() => {
    refreshInFlight = null;
  });
  return refreshInFlight;
}

initModals();
setTokenProvider(askForToken);

byId("fallback-dismiss").addEventListener("click", () => {
  sessionStorage.setItem(NOTICE_DISMISSED_KEY, "1");
  byId("fallback-notice").hidden = true;
});

const examplesToggle = byId("show-examples");
examplesToggle.checked = !examplesHidden();
examplesToggle.addEventListener("change", () => {
  setExamplesHidden(!examplesToggle.checked);
  searchView.examplesChanged();
  refresh();
});

const gallery = new Gallery({
  onFindSimilar: (name) => {
    sections.select(byId("tab-search"));
    byId("panel-search").focus({ preventScroll: true });
    searchView.searchByFilename(name);
  },
  onChanged: refresh,
});
const searchView = new SearchView({ onLibraryChanged: refresh });
const duplicatesView = new DuplicatesView({ onLibraryChanged: refresh });
const featureJob = new FeatureJob({ onFinished: refresh });

const sections = initTablist(document.querySelector(".tabs"), (tab) => {
  history.replaceState(null, "", `#${tab.id.replace("tab-", "")}`);
  if (tab.id === "tab-duplicates") duplicatesView.show();
});
const linkedTab = sections.tabs.find((tab) => `#${tab.id.replace("tab-", "")}` === location.hash);
if (linkedTab) sections.select(linkedTab);

// A file dropped outside a drop zone must not make the browser navigate away from the app.
for (const type of ["dragover", "drop"]) document.addEventListener(type, (event) => event.preventDefault());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") refresh();
});

async function follow() {
  if (document.visibilityState !== "visible" || refreshInFlight || serverWasDown) return;
  try {
    const status = await getStatus();
    const jobToFollow = status.job?.running && !featureJob.running;
    if (status.library_version !== libraryVersion || jobToFollow) await refresh();
    else renderStatus(status);
  } catch {
    // The next refresh reports an unreachable server.
  }
}

refresh();
setInterval(follow, FOLLOW_MS);
