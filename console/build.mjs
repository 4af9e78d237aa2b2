// One small build step: bundle the ES modules and the stylesheet into dist/.
// The relay serves dist/index.html at / and dist/assets/* at /assets/.
import { build } from "esbuild";
import { mkdir, readFile, writeFile, rm } from "node:fs/promises";

await rm("dist", { recursive: true, force: true });
await mkdir("dist/assets", { recursive: true });
await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "esm",
  // The terminal (xterm.js) and the player (asciinema-player) are imported on first use:
  // they go into chunks of their own, loaded from /assets/ like app.js.
  splitting: true,
  chunkNames: "chunks/[name]-[hash]",
  target: ["chrome110", "firefox115", "safari16"],
  outdir: "dist/assets",
  legalComments: "linked",
  logLevel: "warning",
});
// One stylesheet: xterm.js's and asciinema-player's CSS (from node_modules) and ours.
await build({
  entryPoints: { app: "src/app.css" },
  bundle: true,
  minify: true,
  outdir: "dist/assets",
  logLevel: "warning",
});
await writeFile("dist/index.html", await readFile("src/index.html"));
console.log("console: built dist/");
