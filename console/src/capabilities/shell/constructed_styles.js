// xterm.js 6 writes its theme, cell size and scrollbar CSS into <style> elements it
// creates itself (all it does with them: set textContent, remove()). The console runs
// under `style-src 'self'`, which refuses inline <style> blocks, even empty ones, and
// reports each as a CSP violation, so the terminal would render without its colours
// and row layout. Rather than weaken the policy for every page, document.createElement
// ("style") hands out an inert stand-in instead (a <template>: never rendered, never
// parsed as CSS) whose text goes to a constructed stylesheet adopted by the document
// (CSSOM, which style-src does not govern); removing the stand-in drops its sheet.
// lit-html and asciinema-player create no <style> elements, so only xterm's pass here.

let installed = false;

export function installConstructedStyles(doc = document) {
  if (installed || typeof CSSStyleSheet === "undefined" || !("adoptedStyleSheets" in doc)) return;
  installed = true;
  const create = doc.createElement.bind(doc);
  doc.createElement = function createElement(name, options) {
    if (String(name).toLowerCase() !== "style") return create(name, options);
    return standIn(doc, create("template"));
  };
}

function standIn(doc, el) {
  const sheet = new CSSStyleSheet();
  let text = "";
  el.dataset.constructedStyle = "";
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  Object.defineProperty(el, "textContent", {
    configurable: true,
    get: () => text,
    set: (value) => {
      text = value == null ? "" : String(value);
      sheet.replaceSync(text);
    },
  });
  const remove = el.remove.bind(el);
  el.remove = () => {
    doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
    remove();
  };
  return el;
}
