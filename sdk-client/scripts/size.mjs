// Measures bundle size the same way for our client, socket.io-client and
// centrifuge: esbuild bundle + minify (ESM, browser, es2020), then gzip at
// zlib level 9. Prints a plain table and the same numbers as markdown.

import { build } from "esbuild";
import { gzipSync, constants } from "node:zlib";
import { readFileSync } from "node:fs";
import os from "node:os";

const packageRoot = new URL("..", import.meta.url).pathname;

/** What each row bundles: everything its package's main entry exports. */
const targets = [
  { name: "@realtime/client, whole entry", contents: 'export * from "./src/index.ts";', version: readVersion("package.json") },
  {
    name: "@realtime/client, RealtimeClient + RealtimeError",
    contents: 'export { RealtimeClient, RealtimeError } from "./src/index.ts";',
    version: readVersion("package.json"),
  },
  // The opt-in member list on top of the core: what an app that uses it ships.
  {
    name: "@realtime/client, RealtimeClient + RealtimeError + RoomMembers",
    contents: 'export { RealtimeClient, RealtimeError, RoomMembers } from "./src/index.ts";',
    version: readVersion("package.json"),
  },
  { name: "socket.io-client", contents: 'export * from "socket.io-client";', version: readVersion("node_modules/socket.io-client/package.json") },
  { name: "centrifuge", contents: 'export * from "centrifuge";', version: readVersion("node_modules/centrifuge/package.json") },
];

// Read package.json files directly: some packages do not export "./package.json".
function readVersion(pathFromPackageRoot) {
  return JSON.parse(readFileSync(packageRoot + pathFromPackageRoot, "utf8")).version;
}

async function measure(target) {
  const result = await build({
    stdin: { contents: target.contents, resolveDir: packageRoot, loader: "ts" },
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    write: false,
    legalComments: "none",
    logLevel: "error",
  });
  const code = result.outputFiles[0].contents;
  const gzipped = gzipSync(code, { level: constants.Z_BEST_COMPRESSION });
  return { ...target, minBytes: code.length, gzipBytes: gzipped.length };
}

const kb = (bytes) => (bytes / 1024).toFixed(2);
const rows = [];
for (const target of targets) rows.push(await measure(target));

console.log("min = esbuild --bundle --minify (esm, browser, es2020); gz = gzip level 9 of that\n");
const nameWidth = Math.max(...rows.map((row) => `${row.name} ${row.version}`.length));
console.log(`${"bundle".padEnd(nameWidth)}  ${"min B".padStart(8)}  ${"min KB".padStart(7)}  ${"gz B".padStart(7)}  ${"gz KB".padStart(6)}`);
for (const row of rows) {
  const label = `${row.name} ${row.version}`.padEnd(nameWidth);
  console.log(`${label}  ${String(row.minBytes).padStart(8)}  ${kb(row.minBytes).padStart(7)}  ${String(row.gzipBytes).padStart(7)}  ${kb(row.gzipBytes).padStart(6)}`);
}

console.log(`\nMarkdown (${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} cores, Node ${process.versions.node.split(".")[0]}, \`npm run size\`):\n`);
console.log("| bundle | version | min (bytes) | min (KB) | min+gzip (bytes) | min+gzip (KB) |");
console.log("| --- | --- | ---: | ---: | ---: | ---: |");
for (const row of rows) {
  console.log(`| ${row.name} | ${row.version} | ${row.minBytes} | ${kb(row.minBytes)} | ${row.gzipBytes} | ${kb(row.gzipBytes)} |`);
}

// The budget is the aim for the core: what every app ships (RealtimeClient and its
// errors; rooms, reconnects, refresh, heartbeats and the notifications helper, which the client
// constructs, are all in it). The whole entry adds what tree-shaking drops for apps that do not
// import it: RoomMembers and the ERROR_CODES / CLOSE_CODES lists.
const [whole, core, coreWithMembers] = rows;
const budget = 6 * 1024;
console.log(`\nwhole entry: ${whole.gzipBytes} B min+gzip`);
console.log(`core (RealtimeClient + RealtimeError): ${core.gzipBytes} B (budget ${budget} B: ${core.gzipBytes <= budget ? "within" : "OVER"})`);
console.log(`RoomMembers adds ${coreWithMembers.gzipBytes - core.gzipBytes} B min+gzip to the core (outside the budget: opt-in)`);
if (core.gzipBytes > budget) process.exitCode = 1;
