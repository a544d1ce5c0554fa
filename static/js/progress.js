// The "Generate Features" button and its live progress bar, fed by the server's event stream.
import { generateFeatures, getStatus } from "./api.js";
import { el, formatCount } from "./dom.js";
import { showToast, toastError } from "./toast.js";

// How often the page asks whether a job it cannot stream has finished.
const JOB_POLL_MS = 2000;
const byId = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class FeatureJob {
  /** onFinished runs after every run, successful or not, so the caller can refresh its data. */
  constructor({ onFinished }) {
    this.onFinished = onFinished;
    this.running = false;
    this.button = byId("generate-button");
    this.panel = byId("generate-panel");
    this.label = byId("generate-label");
    this.count = byId("generate-count");
    this.bar = byId("generate-bar");
    this.button.addEventListener("click", () => this.run({ start: true }));
  }

  /** start=false follows a job that is already running on the server (after a page reload). */
  async run({ start }) {
    if (this.running) return;
    this.running = true;
    this.button.disabled = true;
    this.panel.hidden = false;
    this.panel.classList.remove("failed", "done");
    this.panel.setAttribute("aria-busy", "true");
    this.label.textContent = start ? "Generating features…" : "Feature generation in progress…";
    this.count.textContent = "";
    this.bar.removeAttribute("value");
    this.showSkipped([]);
    try {
      const done = await generateFeatures({ start, onEvent: (event) => this.showProgress(event) });
      this.showDone(done);
    } catch (error) {
      // 429: the server runs the job but already feeds as many progress streams as it allows.
      if (error.status === 429) await this.waitWithoutStream();
      else this.showFailure(error);
    } finally {
      this.running = false;
      this.button.disabled = false;
      this.panel.removeAttribute("aria-busy");
      this.onFinished();
    }
  }

  showFailure(error) {
    this.panel.classList.add("failed");
    this.label.textContent = "Feature generation failed";
    this.count.textContent = error.message;
    this.bar.value = 0;
    toastError(error);
  }

  /** Follows a running job through /api/status when no progress stream is to be had. */
  async waitWithoutStream() {
    this.label.textContent = "Feature generation is running on the server";
    this.count.textContent = "Its progress cannot be shown here now (too many open progress streams); "
      + "this page checks every few seconds.";
    let status;
    try {
      do {
        await sleep(JOB_POLL_MS);
        status = await getStatus();
      } while (status.job?.running);
    } catch (error) {
      this.showFailure(error);
      return;
    }
    this.panel.classList.add("done");
    this.bar.max = 1;
    this.bar.value = 1;
    this.label.textContent = "Features are up to date";
    const total = (status.originals || 0) + (status.user_images || 0);
    this.count.textContent = `${status.indexed.toLocaleString()} of ${formatCount(total, "image")} indexed`;
    showToast("Feature generation finished.", "success");
  }

  showProgress(event) {
    if (event.complete) return;
    const total = event.total || 0;
    const current = event.current || 0;
    if (total > 0) {
      this.bar.max = total;
      this.bar.value = current;
      const percent = event.progress ?? Math.round((100 * current) / total);
      this.count.textContent = `${current.toLocaleString()} / ${total.toLocaleString()} (${percent}%)`;
    }
    this.showSkipped(event.skipped || []);
  }

  showDone(event) {
    const computed = event.computed || 0;
    const skipped = event.skipped || [];
    this.panel.classList.add("done");
    this.bar.max = 1;
    this.bar.value = 1;
    this.label.textContent = "Features are up to date";
    const total = (event.count || 0) + (event.original_count || 0);
    this.count.textContent = `${formatCount(computed, "new image")} indexed, ${total.toLocaleString()} in total`;
    this.showSkipped(skipped);
    let message = computed
      ? `Generated features for ${formatCount(computed, "image")}.`
      : "Every image already had its features.";
    if (skipped.length) message += ` ${formatCount(skipped.length, "file")} skipped.`;
    showToast(message, skipped.length ? "info" : "success");
  }

  showSkipped(skipped) {
    const details = byId("skipped-details");
    details.hidden = skipped.length === 0;
    byId("skipped-summary").textContent = `${formatCount(skipped.length, "file")} skipped`;
    byId("skipped-list").replaceChildren(
      ...skipped.map((item) =>
        el("li", {}, el("span", { class: "card-name" }, item.filename || ""), ": ", item.error || "unreadable"),
      ),
    );
  }
}
