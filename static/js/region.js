// Dragging a box on the query preview: the region a search is narrowed to, as fractions of the image.

// A drag smaller than this (a click, a twitch) keeps the region as it was.
const MIN_FRACTION = 0.04;

const clamp01 = (value) => Math.max(0, Math.min(1, value));

export class RegionSelector {
  /** stage: the element wrapping exactly the image; overlay: the box drawn on it; onSelect([x, y, w, h]). */
  constructor(stage, overlay, onSelect) {
    this.stage = stage;
    this.overlay = overlay;
    this.onSelect = onSelect;
    this.enabled = false;
    this.box = null;
    this.start = null;
    stage.addEventListener("pointerdown", (event) => this.begin(event));
    stage.addEventListener("pointermove", (event) => this.move(event));
    stage.addEventListener("pointerup", (event) => this.end(event));
    stage.addEventListener("pointercancel", () => this.cancel());
  }

  setEnabled(enabled) {
    this.enabled = enabled;
    this.stage.classList.toggle("selectable", enabled);
    if (!enabled) this.cancel();
  }

  /** Shows `box` ([x, y, w, h] fractions) on the image, or nothing for null. */
  show(box) {
    this.box = box;
    this.draw(box);
  }

  draw(box) {
    this.overlay.hidden = !box;
    if (!box) return;
    const [x, y, w, h] = box;
    // Percentages of the stage, which is the image's own box: right at any size the preview is drawn.
    Object.assign(this.overlay.style, {
      left: `${x * 100}%`, top: `${y * 100}%`, width: `${w * 100}%`, height: `${h * 100}%`,
    });
  }

  point(event) {
    const rect = this.stage.getBoundingClientRect();
    return [clamp01((event.clientX - rect.left) / rect.width), clamp01((event.clientY - rect.top) / rect.height)];
  }

  dragged(event) {
    const [x0, y0] = this.start;
    const [x1, y1] = this.point(event);
    return [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)];
  }

  begin(event) {
    if (!this.enabled || event.button !== 0) return;
    event.preventDefault();
    this.start = this.point(event);
    this.stage.setPointerCapture(event.pointerId);
  }

  move(event) {
    if (this.start) this.draw(this.dragged(event));
  }

  end(event) {
    if (!this.start) return;
    const box = this.dragged(event);
    this.start = null;
    if (box[2] < MIN_FRACTION || box[3] < MIN_FRACTION) {
      this.draw(this.box);
      return;
    }
    const [x, y, w, h] = box.map((value) => Math.round(value * 10000) / 10000);
    const rounded = [x, y, Math.min(w, 1 - x), Math.min(h, 1 - y)];
    this.show(rounded);
    this.onSelect(rounded);
  }

  cancel() {
    if (!this.start) return;
    this.start = null;
    this.draw(this.box);
  }
}
