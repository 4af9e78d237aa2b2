// Every capability panel the console has, registered in the order the session page
// shows them. One import per capability: see ./registry.js.

import "./info.js";
import "./diagnostics.js";
import "./fix.js";
import "./shell/panel.js";
import "./cobrowse.js";

export { panelsFor, resetPanels } from "./registry.js";
