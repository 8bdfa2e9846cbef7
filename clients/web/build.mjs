// Bundles the dashboard into dist/ (index.html, app.js, styles.css); `--tests` bundles test/*.test.ts into dist-tests/.
import { build } from "esbuild";
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";

const tests = process.argv.includes("--tests");

if (tests) {
  const entries = (await readdir("test")).filter((name) => name.endsWith(".test.ts")).map((name) => `test/${name}`);
  await rm("dist-tests", { recursive: true, force: true });
  await build({ entryPoints: entries, outdir: "dist-tests", bundle: true, platform: "node", format: "esm", logLevel: "warning" });
} else {
  await rm("dist", { recursive: true, force: true });
  await mkdir("dist", { recursive: true });
  await build({
    entryPoints: ["src/main.ts"],
    outfile: "dist/app.js",
    bundle: true,
    format: "esm",
    target: "es2022",
    minify: true,
    sourcemap: true,
    logLevel: "warning",
  });
  await copyFile("index.html", "dist/index.html");
  await copyFile("src/styles.css", "dist/styles.css");
}
