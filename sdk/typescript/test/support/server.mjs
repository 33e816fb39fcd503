// Starts a real `nimbus serve` for integration tests: a free port on 127.0.0.1, a temp data dir
// and a temp HOME (so the credential file the server writes on first start lands there).
//
// The binary is $NIMBUS_BIN, else ../../target/debug/nimbus relative to this package (the
// workspace's default cargo target dir). A missing binary fails the test with what to do; it is
// never a silent skip.
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

export function serverBinary() {
  const bin = process.env.NIMBUS_BIN || resolve(PACKAGE_DIR, "..", "..", "target", "debug", "nimbus");
  if (!existsSync(bin)) {
    throw new Error(
      `the nimbus server binary is not at ${bin}; build it first (cargo build -p nimbus in the repository root) ` +
        "and set NIMBUS_BIN to its path if your cargo target dir is not ./target",
    );
  }
  return bin;
}

async function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

// Each test server gets a bridge and subnet of its own, because node runs test files in parallel,
// and removes them when it stops: a server leaves its bridge and nftables tables on the host by
// design (its sandboxes outlive it), which a test run must not. Slots are claimed with an atomic
// mkdir holding the claimant's pid; a slot whose claimant died is taken over.
const NET_SLOTS = "/run/nimbus/sdk-test-nets";

async function claimNetwork() {
  try {
    await mkdir(NET_SLOTS, { recursive: true });
  } catch {
    return null; // not root: the server keeps its default network (sandboxes cannot run anyway)
  }
  for (let n = 1; n < 250; n++) {
    const slot = join(NET_SLOTS, String(n));
    try {
      await mkdir(slot);
    } catch (e) {
      if (e.code !== "EEXIST") throw e;
      let holder = NaN;
      try {
        holder = Number(await readFile(join(slot, "pid"), "utf8"));
      } catch {
        // claimed a moment ago, pid not written yet
        continue;
      }
      try {
        process.kill(holder, 0);
        continue; // alive
      } catch {
        // its claimant is gone: take the slot over
      }
    }
    await writeFile(join(slot, "pid"), String(process.pid));
    return n;
  }
  throw new Error(`no free network slot for a test server in ${NET_SLOTS}; remove stale entries`);
}

function releaseNetwork(n) {
  const bridge = `nmbsdk${n}`;
  const quiet = (cmd, args) => spawnSync(cmd, args, { stdio: "ignore" });
  for (const family of ["inet", "bridge"]) {
    quiet("nft", ["delete", "table", family, `nimbus_${bridge}`]);
  }
  quiet("ip", ["link", "delete", bridge]);
  const list = spawnSync("ip", ["netns", "list"], { encoding: "utf8" });
  for (const line of (list.stdout ?? "").split("\n")) {
    const ns = line.split(" ")[0];
    if (ns.startsWith(`nimbus-${bridge}-`)) {
      quiet("ip", ["netns", "delete", ns]);
      quiet("umount", ["-l", `/run/nimbus/userns/${ns}`]);
      quiet("rm", ["-f", `/run/nimbus/userns/${ns}`]);
    }
  }
  quiet("rm", ["-rf", join(NET_SLOTS, String(n))]);
}

/** Environment for child processes with every NIMBUS_* variable of the test runner removed. */
export function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("NIMBUS_")) env[k] = v;
  return { ...env, ...extra };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * @returns {Promise<{endpoint: string, token: string, tenantId: string, home: string, dataDir: string,
 *   credentialFile: string, log: () => string, stop: () => Promise<void>}>}
 */
export async function startServer() {
  const bin = serverBinary();
  const root = await mkdtemp(join(tmpdir(), "nimbus-sdk-it-"));
  const home = join(root, "home");
  const dataDir = join(root, "data");
  const port = await freePort();
  const listen = `127.0.0.1:${port}`;
  let output = "";
  const net = await claimNetwork();
  const args = ["serve", "--listen", listen, "--data-dir", dataDir];
  if (net !== null) {
    const config = join(root, "nimbus.toml");
    await writeFile(config, `[runtime]\nbridge = "nmbsdk${net}"\nsubnet = "10.233.${net}.0/24"\n`);
    args.push("--config", config);
  }
  const child = spawn(bin, args, {
    env: cleanEnv({ HOME: home, RUST_LOG: process.env.RUST_LOG ?? "info" }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  let exited = null;
  child.once("exit", (code, signal) => (exited = { code, signal }));

  const endpoint = `http://${listen}`;
  const credentialFile = join(home, ".config", "nimbus", "application_default_credentials.json");
  const stop = async () => {
    if (exited === null) {
      child.kill("SIGTERM");
      for (let i = 0; i < 100 && exited === null; i++) await sleep(50);
      if (exited === null) child.kill("SIGKILL");
    }
    if (net !== null) releaseNetwork(net);
    await rm(root, { recursive: true, force: true });
  };

  // Readiness: /healthz answers without a credential. 60 s covers a cold start on a busy 2-core
  // machine; this bounds a hang, it is not a timing assertion.
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited !== null) {
      throw new Error(`nimbus serve exited (${JSON.stringify(exited)}) before it was ready:\n${output}`);
    }
    try {
      const res = await fetch(`${endpoint}/healthz`);
      if (res.ok && existsSync(credentialFile)) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`nimbus serve on ${listen} did not answer /healthz within 60 s:\n${output}`);
    }
    await sleep(100);
  }
  const creds = JSON.parse(await readFile(credentialFile, "utf8"));
  if (typeof creds.token !== "string" || creds.token === "") {
    await stop();
    throw new Error(`the credential file ${credentialFile} has no token: ${JSON.stringify(Object.keys(creds))}`);
  }
  return {
    endpoint,
    token: creds.token,
    tenantId: creds.tenantId,
    fileEndpoint: creds.endpoint,
    home,
    dataDir,
    credentialFile,
    log: () => output,
    stop,
  };
}

/** A raw HTTP call with the admin token, for setting up state the SDK does not cover (tenants, credentials). */
export async function adminCall(server, method, path, body) {
  const res = await fetch(`${server.endpoint}${path}`, {
    method,
    headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  if (!res.ok) throw new Error(`${method} ${path} -> ${res.status}: ${text}`);
  return parsed;
}
