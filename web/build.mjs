// Build the page into web/dist (ignored by git): `node web/build.mjs` (make setup and
// `verinfer web` run it). The ABIs are bundled from workers/verinfer/abi, written from the
// compiled contracts by scripts/export_abi.py.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2022"],
  outfile: join(out, "app.js"),
  logLevel: "warning",
  legalComments: "none",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
copyFileSync(join(here, "src", "style.css"), join(out, "style.css"));
console.log(`built ${out}`);
