// xterm.js 6 styles itself in two ways that the console's `style-src 'self'` refuses
// (and reports, each time, as a CSP violation), so the terminal would lose its
// colours and row layout:
// - it writes its theme, cell size and scrollbar CSS into <style> elements it creates
//   (all it does with them: set textContent, remove()). document.createElement("style")
//   hands out an inert stand-in instead (a <template>: never rendered, never parsed as
//   CSS) whose text goes to a constructed stylesheet adopted by the document (CSSOM,
//   which style-src does not govern); removing the stand-in drops its sheet;
// - it sets 24-bit colours, and contrast colours on a selection, with
//   setAttribute("style", ...) on its cells. A script's setAttribute("style") on an
//   HTML element becomes the same declarations through CSSOM (style.cssText).
// What stays refused is what an injection could bring: <style> blocks and style
// attributes in parsed markup. Only scripts served by the relay (script-src 'self')
// reach these paths; lit-html binds no style, asciinema-player creates no <style>.
// Installed once, when the first terminal opens, rather than weakening the policy
// for every page.

let installed = false;

export function installCspShims(doc = document) {
  if (installed) return;
  installed = true;
  if (typeof CSSStyleSheet !== "undefined" && "adoptedStyleSheets" in doc) {
    const create = doc.createElement.bind(doc);
    doc.createElement = function createElement(name, options) {
      if (String(name).toLowerCase() !== "style") return create(name, options);
      return standIn(doc, create("template"));
    };
  }
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function setAttributeViaCssom(name, value) {
    if (this instanceof HTMLElement && String(name).toLowerCase() === "style") {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
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
