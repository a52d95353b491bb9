// Build the page into worker/static/ (committed, so the Python package serves it with no
// build step at run time): bundle src/app.js with livekit-client, copy the HTML and CSS.
//   npm ci && npm run build            (or: node build.mjs --outdir DIR)
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const flag = process.argv.indexOf("--outdir");
const out = flag > 0 ? process.argv[flag + 1] : join(here, "..", "worker", "static");

await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "app.js")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "esm",
  minify: true,
  target: ["chrome100", "firefox100", "safari15"],
  legalComments: "eof",
  logLevel: "warning",
});
await copyFile(join(here, "index.html"), join(out, "index.html"));
await copyFile(join(here, "style.css"), join(out, "style.css"));
console.log(`built ${out}`);
