// Vitest: unit tests only (test/unit); the browser tests run under node --test.
// Tests import "@realtime/client" as apps do; here it is the TypeScript source.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    alias: { "@realtime/client": fileURLToPath(new URL("./src/index.ts", import.meta.url)) },
  },
  test: {
    include: ["test/unit/**/*.test.ts"],
    environment: "node",
  },
});
