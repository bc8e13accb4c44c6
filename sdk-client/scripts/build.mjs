// Bundles src/index.ts with esbuild into dist/: an ESM build for bundlers and
// <script type="module">, and a minified one for direct use and size checks.
// Declarations come from `tsc -p tsconfig.build.json` (see package.json).

import { build } from "esbuild";

const shared = {
  entryPoints: ["src/index.ts"],
  bundle: true,
  format: "esm",
  // ES2020: matches tsconfig's target and every browser with native WebSocket + fetch + URL.
  target: "es2020",
  platform: "neutral",
  sourcemap: true,
  legalComments: "none",
  logLevel: "warning",
};

await build({ ...shared, outfile: "dist/realtime-client.js" });
await build({ ...shared, outfile: "dist/realtime-client.min.js", minify: true });
console.log("built dist/realtime-client.js and dist/realtime-client.min.js");
