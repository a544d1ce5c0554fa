// Short notifications in a corner. Messages are always set as text, never parsed as HTML.
import { icon } from "./dom.js";

const MAX_VISIBLE = 5;
const LIFETIME_MS = { success: 4000, info: 5000, error: 9000 };
const ICONS = { success: "i-check", info: "i-info", error: "i-alert" };

function container() {
  return document.getElementById("toasts");
}

function dismiss(toast) {
  if (!toast.isConnected) return;
  clearTimeout(toast.timer);
  toast.classList.add("toast-leaving");
  toast.addEventListener("animationend", () => toast.remove(), { once: true });
  // animationend can be skipped (background tab, display change); remove regardless.
  setTimeout(() => toast.remove(), 400);
}

/** type: "success" | "info" | "error". Errors are announced assertively. */
export function showToast(message, type = "info") {
  const root = container();
  const toast = document.createElement("div");
  toast.className = `toast toast-${type}`;
  toast.setAttribute("role", type === "error" ? "alert" : "status");

  const text = document.createElement("p");
  text.className = "toast-message";
  text.textContent = message;

  const close = document.createElement("button");
  close.type = "button";
  close.className = "icon-btn toast-close";
  close.setAttribute("aria-label", "Dismiss notification");
  close.append(icon("i-close"));
  close.addEventListener("click", () => dismiss(toast));

  toast.append(icon(ICONS[type] || ICONS.info), text, close);
  root.append(toast);

  const schedule = () => {
    toast.timer = setTimeout(() => dismiss(toast), LIFETIME_MS[type] || LIFETIME_MS.info);
  };
  // Keep a toast while the pointer or focus is on it, so it can be read.
  toast.addEventListener("mouseenter", () => clearTimeout(toast.timer));
  toast.addEventListener("mouseleave", schedule);
  toast.addEventListener("focusin", () => clearTimeout(toast.timer));
  toast.addEventListener("focusout", schedule);
  schedule();

  const live = [...root.children].filter((node) => !node.classList.contains("toast-leaving"));
  live.slice(0, Math.max(0, live.length - MAX_VISIBLE)).forEach(dismiss);
  return toast;
}

export const toastError = (error) => showToast(error && error.message ? error.message : String(error), "error");
