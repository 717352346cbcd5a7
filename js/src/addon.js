// Finds the napi addon for this machine. In a checkout, `cargo xtask js build` puts it in
// ../native/; an installed package gets it from the per-platform package that npm picked among
// the `optionalDependencies` (the napi-rs layout, e.g. `longrun-linux-x64-gnu`).
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);

/** The napi-rs name of this platform: `linux-x64-gnu`, `linux-arm64-musl`, `darwin-arm64`, … */
export function platformName() {
  const { platform, arch } = process;
  if (platform !== "linux") return `${platform}-${arch}`;
  const glibc = process.report?.getReport?.().header?.glibcVersionRuntime;
  return `${platform}-${arch}-${glibc ? "gnu" : "musl"}`;
}

export function loadAddon() {
  const dev = new URL(`../native/longrun.${process.platform}-${process.arch}.node`, import.meta.url);
  if (existsSync(dev)) return require(fileURLToPath(dev));
  const name = `longrun-${platformName()}`;
  try {
    return require(name);
  } catch (e) {
    if (e.code !== "MODULE_NOT_FOUND" || !String(e.message).includes(name)) {
      throw new Error(`longrun: the native addon ${name} did not load: ${e.message}`);
    }
    throw new Error(
      `longrun: no prebuilt native addon fits this machine (${platformName()}): the package ${name} ` +
        `is not installed (npm installs it only where it fits, and it may not be built for this platform). ` +
        `Use the wasm build instead (\`import { Client } from "longrun/wasm"\`), or build the addon ` +
        `from a checkout with \`cargo xtask js build\`.`,
    );
  }
}
