// The "Generate Features" button and its live progress bar, fed by the server's event stream.
import { generateFeatures } from "./api.js";
import { el, formatCount } from "./dom.js";
import { showToast, toastError } from "./toast.js";

const byId = (id) => document.getElementById(id);

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
      this.panel.classList.add("failed");
      this.label.textContent = "Feature generation failed";
      this.count.textContent = error.message;
      this.bar.value = 0;
      toastError(error);
    } finally {
      this.running = false;
      this.button.disabled = false;
      this.panel.removeAttribute("aria-busy");
      this.onFinished();
    }
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
