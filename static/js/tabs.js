// WAI-ARIA tabs: click or arrow keys select a tab and show the panel it controls.

/** Wires every [role=tab] in `list`; onSelect(tab) runs after each change. Returns {select(tab, focus)}. */
export function initTablist(list, onSelect = () => {}) {
  const tabs = [...list.querySelectorAll('[role="tab"]')];

  function select(tab, focus = false) {
    for (const each of tabs) {
      const active = each === tab;
      each.setAttribute("aria-selected", String(active));
      each.tabIndex = active ? 0 : -1;
      document.getElementById(each.getAttribute("aria-controls")).hidden = !active;
    }
    if (focus) tab.focus();
    onSelect(tab);
  }

  list.addEventListener("click", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab && tabs.includes(tab)) select(tab);
  });

  list.addEventListener("keydown", (event) => {
    const index = tabs.indexOf(document.activeElement);
    if (index < 0) return;
    const moves = {
      ArrowLeft: index - 1,
      ArrowRight: index + 1,
      Home: 0,
      End: tabs.length - 1,
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    select(tabs[(moves[event.key] + tabs.length) % tabs.length], true);
  });

  return { select, tabs };
}
