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
  if (typeof send !== "function") return;
  const stringify = JSON.stringify;
  const later = g.setTimeout.bind(g);
  const href = String(g.location && g.location.href);
  for (const source of CONFIG.privateUrls) {
    if (new RegExp(source).test(href)) {
      if (g.top === g) send(stringify({ private: true }));
      return;
    }
  }
  const rrwebRecord = (function () {
    var exports, module, define; // the UMD bundle attaches to `this` (the box below)
    const box = {};
    (function () {
__RRWEB__
    }).call(box);
    return box.rrwebRecord;
  })();
  const sensitive = CONFIG.maskSelector;
  const SNAPSHOT_ASK = "backline-cobrowse-snapshot";
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
  // rrweb drops a cross-origin frame's events until the parent's own snapshot has
  // serialized that frame's <iframe> (IframeManager.crossOriginIframeMap is filled only
  // then). An out-of-process frame often reaches DOMContentLoaded first, and its first
  // full snapshot was lost (later mutations went on, under ids never added). So, after
  // each full snapshot of this document, every child frame is asked for a fresh one; a
  // child that is a cross-origin recorder answers (it asks its own children in turn).
  const frames = () => {
    for (let i = 0; i < g.frames.length; i++) {
      try { g.frames[i].postMessage({ type: SNAPSHOT_ASK }, "*"); } catch (e) { /* gone */ }
    }
  };
  g.addEventListener("message", (m) => {
    if (g.top === g || m.source !== g.parent || !m.data || m.data.type !== SNAPSHOT_ASK) return;
    try { rrwebRecord.record.takeFullSnapshot(true); } catch (e) { /* not recording yet */ }
  });
  rrwebRecord.record({
    plugins: [{ name: "backline/frames", eventProcessor(event) {
      if (event.type === 2) later(frames, 0);
      return event;
    } }],
    emit(event) {
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
    recordCrossOriginIframes: true,
    recordAfter: "DOMContentLoaded",
    sampling: { mousemove: 50, scroll: 100, input: "last", media: 800 },
    slimDOMOptions: { script: true, comment: true },
  });
  if (g.top === g) {
    // The agent asks for a fresh full snapshot after it had to drop events.
    Object.defineProperty(g, CONFIG.binding + "_snapshot", {
      value: () => rrwebRecord.record.takeFullSnapshot(true), enumerable: false });
  }
})();
