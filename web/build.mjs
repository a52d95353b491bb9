// Build the page's script into worker/static/app.js (committed, so the Python package serves it
// with no build step at run time): bundle src/app.js with livekit-client. The page's HTML and CSS
// are written directly in worker/static/ (there is one copy of each).
//   npm ci && npm run build            (or: node build.mjs --outdir DIR)
import { mkdir } from "node:fs/promises";
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
console.log(`built ${out}`);
