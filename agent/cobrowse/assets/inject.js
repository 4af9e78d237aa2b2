/* Backline co-browse recorder start-up, injected by the agent before any page script
   in every document (Page.addScriptToEvaluateOnNewDocument); the agent fills in its
   configuration and the rrweb bundle (agent/cobrowse/recorder.py). It takes the agent's binding off the global object at
   once, records with rrweb with the privacy options the agent set, and sends events
   in batches. Everything it sends is re-checked by the agent: a page script can call
   the binding too. */
(() => {
  const CONFIG = __CONFIG__;
  const g = globalThis;
  const send = g[CONFIG.binding];
  try { delete g[CONFIG.binding]; } catch (e) { /* not deletable: the agent checks anyway */ }
  const stringify = JSON.stringify;
  const later = g.setTimeout.bind(g);
  const privateRes = CONFIG.privateUrls.map((source) => new RegExp(source));
  const isPrivate = () => {
    const href = String(g.location && g.location.href);
    return privateRes.some((re) => re.test(href));
  };
  // Taken before any page script runs: a page can replace window.parent and patch the
  // prototypes later, not these.
  const up = g.parent;
  const closest = g.Element.prototype.closest;
  const rootOf = g.Node.prototype.getRootNode;
  const hostOf = Object.getOwnPropertyDescriptor(g.ShadowRoot.prototype, "host").get;
  const idName = CONFIG.binding + "_id";
  const blockSelector = CONFIG.blockSelector + ", .rr-block"; // (rrweb's own block class too)
  // Is an <iframe> blocked where it is: it, or an element around it (also around its
  // shadow host), matches the block selector (rrweb keeps a placeholder for it, or does
  // not serialize it at all: nothing may be attached to it).
  const blocked = (el) => {
    try {
      for (let n = el, i = 0; n && i < 64; i += 1) {
        if (closest.call(n, blockSelector)) return true;
        let host = null;
        try { host = hostOf.call(rootOf.call(n)); } catch (e) { host = null; } // a document
        n = host;
      }
      return false;
    } catch (e) { return true; }
  };
  let readable = true;
  if (up !== g) {
    try { readable = !!up.document; } catch (e) { readable = false; }
  }
  if (up !== g && readable) {
    // A frame of its parent's origin does not record: its parent's rrweb serializes it
    // (and a frame of another origin records itself, below, through the binding of its
    // own DevTools target or execution context: the agent merges it; rrweb's
    // recordCrossOriginIframes posts every event to window.parent with targetOrigin
    // "*", where any script of the embedding origin reads them, and stays off). A
    // private same-origin frame marks its own <html> and its <iframe> so that the
    // parent's rrweb blocks it (it serializes the frame's document only at the frame's
    // load; the <html> element does not exist yet when this runs, so it is marked as
    // soon as the parser inserts it).
    if (isPrivate()) {
      const doc = g.document;
      const mark = () => {
        try { if (doc.documentElement) doc.documentElement.setAttribute("data-backline-private", ""); } catch (e) { /* none */ }
      };
      try { if (g.frameElement) g.frameElement.setAttribute("data-backline-private", ""); } catch (e) { /* cross-origin */ }
      mark();
      try {
        new g.MutationObserver(mark).observe(doc, { childList: true });
        doc.addEventListener("DOMContentLoaded", mark, true);
      } catch (e) { /* no observer */ }
    }
    // The agent asks for the id of a cross-origin frame's <iframe> in this document:
    // the rrweb that records this document (the parent's, or its parent's) knows it.
    Object.defineProperty(g, idName, {
      value: (el) => {
        if (isPrivate() || blocked(el)) return "none";
        try {
          const f = up[idName];
          return typeof f === "function" ? f(el) : "none";
        } catch (e) { return "none"; }
      },
      enumerable: false });
    return;
  }
  if (typeof send !== "function") return;
  const rrwebRecord = (function () {
    var exports, module, define; // the UMD bundle attaches to `this` (the box below)
    const box = {};
    (function () {
__RRWEB__
    }).call(box);
    return box.rrwebRecord;
  })();
  const sensitive = CONFIG.maskSelector;
  const queue = [];
  const now = Date.now;
  let timer = null;
  let sent = -1e9;
  // The first event after a quiet spell leaves at once (with what the same task
  // emitted: a timer of 0); then at most one batch per flushMs, so a busy page costs
  // no more binding calls than before and an idle one adds no waiting to a change.
  const flush = () => {
    timer = null;
    if (queue.length) {
      sent = now();
      send(stringify(queue.splice(0, queue.length)));
    }
  };
  // A same-origin frame's nodes reach this rrweb through its mirror. Whatever belongs
  // to a frame whose address is private now is cut here, at the last step before the
  // binding, whatever the order in which the frame's own mark (above) and this rrweb's
  // serialisation of the frame ran (under load the frame's document was serialised
  // before its <html> was marked). This also covers a frame that reaches a private
  // address by pushState, which the frame's own start-up cannot see.
  const mirror = rrwebRecord.record.mirror;
  const top = g.document;
  const inPrivateFrame = (id) => {
    const node = typeof id === "number" ? mirror.getNode(id) : null;
    if (!node) return false;
    const doc = node.nodeType === 9 ? node : node.ownerDocument;
    if (!doc || doc === top) return false;
    let href;
    try { href = String(doc.defaultView ? doc.defaultView.location.href : doc.URL); }
    catch (e) { return true; } // not readable: another origin, never recorded
    return privateRes.some((re) => re.test(href));
  };
  const withoutPrivateFrames = (event) => {
    if (event.type !== 3 || !event.data || !privateRes.length) return event;
    const data = event.data;
    if (data.source === 0) {
      const adds = (data.adds || []).filter((a) => !(a && a.node && inPrivateFrame(a.node.id)));
      const texts = (data.texts || []).filter((t) => !(t && inPrivateFrame(t.id)));
      const attributes = (data.attributes || []).filter((t) => !(t && inPrivateFrame(t.id)));
      if (!adds.length && !texts.length && !attributes.length && !(data.removes || []).length) {
        return null;
      }
      data.adds = adds;
      data.texts = texts;
      data.attributes = attributes;
      return event;
    }
    return inPrivateFrame(data.id) ? null : event;
  };
  const options = {
    emit(raw) {
      // On a private address (also one reached by pushState or a fragment) nothing is
      // sent; the agent drops it too and asks for a fresh snapshot when the page leaves.
      if (isPrivate()) return;
      const event = withoutPrivateFrames(raw);
      if (event === null) return;
      if (event.type === 4 && event.data && typeof event.data.href === "string") {
        // rrweb's meta event carries the address: not its query or fragment (a token).
        try { const u = new URL(event.data.href); event.data.href = u.origin + u.pathname; }
        catch (e) { event.data.href = ""; }
      }
      queue.push(event);
      if (queue.length >= 100) flush();
      else if (timer === null) timer = later(flush, Math.max(0, sent + CONFIG.flushMs - now()));
    },
    maskAllInputs: true,
    maskInputOptions: { password: true, text: true, email: true, tel: true, number: true,
                        search: true, url: true, textarea: true, select: true, date: true,
                        "datetime-local": true, month: true, range: true, time: true,
                        week: true, color: true },
    maskInputFn: (text) => "*".repeat(Math.min(String(text).length, 64)),
    maskTextSelector: sensitive,
    blockSelector: CONFIG.blockSelector,
    recordCanvas: false,
    collectFonts: false,
    inlineImages: false,
    inlineStylesheet: true,
    recordCrossOriginIframes: false,
    recordAfter: "DOMContentLoaded",
    sampling: { mousemove: 50, scroll: 100, input: "last", media: 800 },
    slimDOMOptions: { script: true, comment: true },
  };
  // When the recording starts. rrweb's own choice (DOMContentLoaded) serialises the
  // whole parsed page in one task: on /large.html (18,750 nodes) that task was the
  // customer's longest, 240-1000 ms on the loaded two-core machine (docs/cobrowse.md,
  // "Large pages"). Started as soon as the document has its root element instead,
  // rrweb's full snapshot holds the few nodes parsed so far and every later node
  // reaches it as the parser inserts it (its MutationObserver), so the serialisation
  // is spread over the parser's own tasks. The nodes pass the same masking and
  // blocking as any node a page script adds. rrweb 2.1.6 has no option for this: while
  // the document is loading it waits for DOMContentLoaded, so for the one synchronous
  // call of record() the document says "interactive" (an own property, removed at
  // once; no page script runs in between: none has run yet when <html> is inserted).
  const doc = g.document;
  let started = false;
  const start = () => {
    if (started) return;
    started = true;
    if (doc.readyState !== "loading") {
      rrwebRecord.record(options);
      return;
    }
    let told = false;
    try {
      Object.defineProperty(doc, "readyState", { get: () => "interactive", configurable: true });
      told = true;
    } catch (e) { /* rrweb then waits for DOMContentLoaded, as it would */ }
    try { rrwebRecord.record(options); }
    finally { if (told) delete doc.readyState; }
  };
  if (doc.documentElement || doc.readyState !== "loading") {
    start();
  } else {
    try {
      const watch = new g.MutationObserver(() => {
        if (!doc.documentElement) return;
        watch.disconnect();
        start();
      });
      watch.observe(doc, { childList: true });
    } catch (e) { /* no observer: DOMContentLoaded below */ }
    doc.addEventListener("DOMContentLoaded", start, true);
  }
  // The agent asks for a fresh full snapshot after it had to drop events.
  Object.defineProperty(g, CONFIG.binding + "_snapshot", {
    value: () => rrwebRecord.record.takeFullSnapshot(true), enumerable: false });
  // The agent asks for the id of a cross-origin frame's <iframe> (its own rrweb's
  // snapshot is attached under it, in the agent): "none" while it is not serialized, or
  // when it is blocked or this page is private. What is queued goes first, so that the
  // mutation adding the <iframe> reaches the agent before the answer does.
  Object.defineProperty(g, idName, {
    value: (el) => {
      if (isPrivate() || blocked(el)) return "none";
      flush();
      const id = mirror.getId(el);
      return typeof id === "number" && id > 0 ? "" + id : "none";
    },
    enumerable: false });
})();
