// Runs one compiled guide sample (build/examples/<name>.js) as its own Node process, the way a
// user would run it, with NIMBUS_TOKEN set and an empty HOME (so no credential file helps).
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { cleanEnv, PACKAGE_DIR } from "./server.mjs";

export async function runExample(server, name, { env = {} } = {}) {
  const home = await mkdtemp(join(tmpdir(), "nimbus-sdk-example-home-"));
  const file = join(PACKAGE_DIR, "build", "examples", `${name}.js`);
  const child = spawn(
    process.execPath,
    ["--import", join(PACKAGE_DIR, "test", "support", "redirect-localhost-8080.mjs"), file],
    {
      cwd: PACKAGE_DIR,
      env: cleanEnv({ HOME: home, NIMBUS_TOKEN: server.token, NIMBUS_TEST_SERVER: server.endpoint, ...env }),
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const code = await new Promise((resolve) => child.once("close", resolve));
  await rm(home, { recursive: true, force: true });
  return { code, stdout, stderr };
}

/** Runs a sample that must succeed; fails the test with its output otherwise. */
export async function runExampleOk(server, name, opts) {
  const r = await runExample(server, name, opts);
  if (r.code !== 0) {
    throw new Error(`example ${name} exited with ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}\n--- server log (tail)\n${server.log().slice(-3000)}`);
  }
  return r;
}
