// Every code sample of the four guides, run as written (as its own Node process) against a real
// `nimbus serve`, in the order the guides tell them. Samples that wait for readiness are in
// waits.test.mjs.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Nimbus } from "../../dist/index.js";
import { runExampleOk } from "../support/examples.mjs";
import { startServer } from "../support/server.mjs";

const SERVICE_STATES = ["declared", "stopped", "starting", "running", "stopping", "failed"];
const SANDBOX_STATES = ["pending", "creating", "ready", "stopping", "stopped", "failed"];

describe("guide samples against nimbus serve", () => {
  let server;
  let nimbus;
  before(async () => {
    server = await startServer();
    nimbus = new Nimbus({ endpoint: server.endpoint, token: server.token, tenantId: "demo", env: {} });
  });
  after(async () => server?.stop());

  test("configuring a client sends nothing and needs nothing running", async () => {
    const r = await runExampleOk(server, "00-configure-client");
    assert.equal(r.stdout, "");
  });

  test("the sandbox-backed service sample creates worker at generation 1", async () => {
    const r = await runExampleOk(server, "01-create-sandbox-service");
    const [generation, state] = r.stdout.trim().split(" ");
    assert.equal(generation, "1");
    assert.ok(SERVICE_STATES.includes(state), `unexpected lifecycle state ${state}`);
    const worker = await nimbus.services.get({ name: "worker" });
    assert.equal(worker.metadata.name, "worker");
    assert.equal(worker.metadata.generation, 1);
    assert.deepEqual(worker.metadata.labels, { team: "search" });
    assert.equal(worker.spec.backend.kind, "sandbox");
    assert.deepEqual(worker.spec.backend.sandbox.owner, { kind: "service", serviceName: "worker" });
    assert.equal(worker.status.readiness, "notReady");
  });

  test("the built-in backend sample declares a browser service", async () => {
    const r = await runExampleOk(server, "02-builtin-backend");
    assert.equal(r.stdout.trim(), "browser builtIn declared");
  });

  test("the external backend sample declares a search service", async () => {
    const r = await runExampleOk(server, "03-external-backend");
    assert.equal(r.stdout.trim(), "search external declared");
    const search = await nimbus.services.get({ name: "search" });
    assert.deepEqual(search.spec.backend.endpoint, { url: "https://search.internal:9200" });
    assert.equal(search.spec.backend.health.kind, "http");
    assert.equal(search.spec.backend.health.path, "/healthz");
  });

  test("the list sample prints every service with its readiness", async () => {
    const r = await runExampleOk(server, "07-list-services");
    const lines = r.stdout.trim().split("\n").sort();
    assert.deepEqual(lines, ["browser notReady", "search notReady", "worker notReady"]);
  });

  test("the update and delete sample bumps the generation, then deletes with it", async () => {
    await runExampleOk(server, "06-update-delete");
    await assert.rejects(nimbus.services.get({ name: "worker" }), { code: "resource.not_found", status: 404 });
  });

  test("the session samples open a stdio session on worker, list it open, and close it", async () => {
    await runExampleOk(server, "01-create-sandbox-service");
    const r = await runExampleOk(server, "10-sessions");
    const [first, listed] = r.stdout.trim().split("\n");
    const [id, expiresAt] = first.split(" ");
    assert.ok(id.length > 0);
    assert.ok(!Number.isNaN(Date.parse(expiresAt)), `expiresAt ${expiresAt} is not a timestamp`);
    assert.ok(JSON.parse(listed).includes(id), "the open session is in the open list");
    const session = await nimbus.sessions.get({ id });
    assert.equal(session.status.lifecycleState, "closed");
    assert.equal(session.status.closeReason, "done");
    assert.deepEqual(session.spec.target, { service: { name: "worker" } });
    assert.deepEqual(session.spec.channels, ["stdio"]);
    assert.equal(session.spec.targetSnapshot.kind, "service");
    assert.equal(session.spec.targetSnapshot.name, "worker");
    assert.equal(session.spec.targetSnapshot.backend, "sandbox");
    assert.equal(typeof session.spec.targetSnapshot.generation, "number");
    // Requested 10 minutes: expiry lies between open time and open time + 10 minutes.
    const created = Date.parse(session.metadata.createdAt);
    const expires = Date.parse(session.spec.expiresAt);
    assert.ok(expires > created && expires <= created + 10 * 60 * 1000 + 1000, `${session.metadata.createdAt} .. ${session.spec.expiresAt}`);
    const closed = await nimbus.sessions.list({ state: "closed" });
    assert.ok(closed.items.some((s) => s.metadata.id === id));
    const open = await nimbus.sessions.list({ state: "open" });
    assert.ok(!open.items.some((s) => s.metadata.id === id));
  });

  test("the sandbox sample creates, reads and stops a standalone sandbox with redacted launch inputs", async () => {
    const r = await runExampleOk(server, "08-run-sandbox");
    const state = r.stdout.trim().split(" ")[0];
    assert.ok(SANDBOX_STATES.includes(state), `unexpected lifecycle state in "${r.stdout}"`);
    const page = await nimbus.sandboxes.list();
    assert.equal(page.items.length, 1);
    const sandbox = page.items[0];
    assert.match(sandbox.metadata.id, /^sbx_/);
    assert.deepEqual(sandbox.metadata.labels, { purpose: "batch" });
    assert.deepEqual(sandbox.spec.owner, { kind: "standalone", displayName: "batch-job" });
    assert.deepEqual(sandbox.spec.process.argv, { redacted: true, valueCount: 2 });
    assert.equal(sandbox.spec.process.environment.redacted, true);
    assert.ok(!JSON.stringify(sandbox).includes("job.py"), "argv must not come back");
    assert.ok(["stopping", "stopped", "failed"].includes(sandbox.status.lifecycleState), sandbox.status.lifecycleState);
  });

  test("the label filter sample lists only the batch sandboxes", async () => {
    const other = await nimbus.sandboxes.create({
      profile: "worker",
      spec: {
        owner: { kind: "standalone" },
        backend: "container",
        root: { kind: "oci_image", source: { kind: "reference", reference: "busybox" } },
        process: { argv: ["true"] },
      },
      labels: { purpose: "other" },
    });
    const r = await runExampleOk(server, "09-list-sandboxes");
    const ids = JSON.parse(r.stdout.trim());
    const all = (await nimbus.sandboxes.list()).items.map((s) => s.metadata.id);
    assert.equal(all.length, 2);
    assert.ok(!ids.includes(other.metadata.id));
    assert.deepEqual(ids, all.filter((id) => id !== other.metadata.id));
  });
});
