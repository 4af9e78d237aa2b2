// xterm.js 6 writes its theme, cell size and scrollbar CSS into <style> elements it
// creates itself. The console runs under `style-src 'self'`, which refuses inline
// <style> blocks (and reports each as a CSP violation), so the terminal would render
// without its colours and row layout. Rather than weaken the policy for every page,
// the <style> elements the page's scripts create get a constructed stylesheet
// (CSSOM, adopted by the document) that takes their text instead: the element stays
// empty, the rules apply, and removing the element drops its sheet. lit-html and
// asciinema-player create no <style> elements, so in practice only xterm's pass here.

let installed = false;

export function installConstructedStyles(doc = document) {
  if (installed || typeof CSSStyleSheet === "undefined" || !("adoptedStyleSheets" in doc)) return;
  installed = true;
  const create = doc.createElement.bind(doc);
  doc.createElement = function createElement(name, options) {
    const el = create(name, options);
    if (String(name).toLowerCase() === "style") adopt(doc, el);
    return el;
  };
}

function adopt(doc, el) {
  const sheet = new CSSStyleSheet();
  let text = "";
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
}
