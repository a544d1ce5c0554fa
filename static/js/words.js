// Showing what words matched: the ImageNet concepts behind each word, the words left out, and the
// closest vocabulary words offered when none was known. Everything from the server goes in as text.
import { el } from "./dom.js";

// A broad word ("animal") can stand for hundreds of concepts; the first few say enough.
const CONCEPTS_SHOWN = 6;

function conceptChip(concept) {
  return el("li", { class: "chip", title: concept.definition || "" }, concept.name);
}

/** text: the `query.text` of a search answer -> nodes saying which concepts each word matched. */
export function matchedWords(text) {
  const nodes = (text.terms || []).map((term) => {
    const concepts = term.concepts || [];
    const chips = concepts.slice(0, CONCEPTS_SHOWN).map(conceptChip);
    if (concepts.length > CONCEPTS_SHOWN) {
      chips.push(el("li", { class: "chip chip-more" }, `+${(concepts.length - CONCEPTS_SHOWN).toLocaleString()} more`));
    }
    return el("div", { class: "term" }, el("span", { class: "term-text" }, `“${term.text}”`),
      el("span", { class: "muted" }, " matched "), el("ul", { class: "chips", "aria-label": `Concepts for ${term.text}` },
        ...chips));
  });
  const unmatched = text.unmatched || [];
  if (unmatched.length) {
    nodes.push(el("p", { class: "unmatched" },
      `Not among the 1000 concepts, so left out: ${unmatched.map((word) => `“${word}”`).join(", ")}.`));
  }
  return nodes;
}

/** The server's refusal and its suggestions as buttons; onPick(word) runs when one is chosen. */
export function suggestionButtons(message, suggestions, onPick) {
  const buttons = suggestions.map((word) => {
    const button = el("button", { type: "button", class: "btn btn-small suggestion" }, word);
    button.addEventListener("click", () => onPick(word));
    return el("li", {}, button);
  });
  const nodes = [el("p", { class: "error-text" }, message)];
  if (buttons.length) {
    nodes.push(el("div", { class: "suggestions" }, el("span", { class: "muted" }, "Try:"),
      el("ul", { class: "chips", "aria-label": "Suggested words" }, ...buttons)));
  }
  return nodes;
}

/** True when `error` is the server's refusal of words it does not know, with words to offer instead. */
export function isUnknownWords(error) {
  return error?.status === 422 && Array.isArray(error.data?.suggestions);
}
