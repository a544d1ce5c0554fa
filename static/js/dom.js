// Small DOM helpers shared by the views. Text goes in as text nodes, attributes via setAttribute.

const SVG_NS = "http://www.w3.org/2000/svg";

export function icon(id, className = "icon") {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", className);
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const use = document.createElementNS(SVG_NS, "use");
  use.setAttribute("href", `#${id}`);
  svg.append(use);
  return svg;
}

/** el("button", {class: "btn", "aria-label": name}, "text", childNode) */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

// Thumbnails load only when they come near the viewport.
const lazyObserver = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      const img = entry.target;
      lazyObserver.unobserve(img);
      img.src = img.dataset.src;
    }
  },
  { rootMargin: "300px 0px" },
);

export function lazyImage(src, alt) {
  const img = el("img", { alt, "data-src": src, decoding: "async", draggable: "false" });
  // An image the server cannot thumbnail (unreadable file) gets a visible placeholder instead of a hole.
  img.addEventListener("error", () => {
    img.replaceWith(el("span", { class: "thumb-missing", role: "img", "aria-label": `${alt} (no preview)` },
      icon("i-image"), "No preview"));
  }, { once: true });
  lazyObserver.observe(img);
  return img;
}

/** Empties `container`, first releasing the observer's hold on its images. */
export function clearLazy(container) {
  container.querySelectorAll("img[data-src]").forEach((img) => lazyObserver.unobserve(img));
  container.replaceChildren();
}

/** Drives a <nav> holding prev/next buttons (data-page) and a .pager-label. */
export class Pager {
  constructor(nav, onChange) {
    this.nav = nav;
    this.page = 0;
    this.pages = 1;
    this.label = nav.querySelector(".pager-label");
    this.prev = nav.querySelector('[data-page="prev"]');
    this.next = nav.querySelector('[data-page="next"]');
    this.onChange = onChange;
    this.prev.addEventListener("click", () => this.go(this.page - 1));
    this.next.addEventListener("click", () => this.go(this.page + 1));
  }

  go(page) {
    if (page < 0 || page >= this.pages) return;
    this.page = page;
    this.onChange(page);
  }

  /** Clamps the current page to `itemCount` items and updates the controls; returns the slice bounds. */
  update(itemCount, pageSize) {
    this.pages = Math.max(1, Math.ceil(itemCount / pageSize));
    this.page = Math.min(this.page, this.pages - 1);
    this.nav.hidden = this.pages <= 1;
    this.label.textContent = `Page ${this.page + 1} of ${this.pages}`;
    this.prev.disabled = this.page === 0;
    this.next.disabled = this.page >= this.pages - 1;
    const start = this.page * pageSize;
    return [start, Math.min(itemCount, start + pageSize)];
  }
}

/** Highlights `zone` while files are dragged over it and hands dropped files to `onFiles`. */
export function bindDropTarget(zone, onFiles, onUrl) {
  let depth = 0;
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    const files = [...event.dataTransfer.files];
    if (files.length) {
      onFiles(files);
      return;
    }
    // An image dragged from another web page arrives as a link rather than a file.
    const link = (event.dataTransfer.getData("text/uri-list") || "").split("\n").find((line) => /^https?:/i.test(line));
    if (link && onUrl) onUrl(link.trim());
  });
}

export function formatCount(n, singular, plural = `${singular}s`) {
  return `${n.toLocaleString()} ${n === 1 ? singular : plural}`;
}

/** A 0..1 similarity as a percentage with one decimal, e.g. "96.1%". */
export function percent(similarity) {
  const value = Math.max(0, Math.min(1, Number(similarity) || 0)) * 100;
  return `${value.toFixed(1)}%`;
}
