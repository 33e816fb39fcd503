// Calls the guides mention without a sample of their own: restart, forced delete, session TTL
// defaults and caps, per-call tenants, sandbox state filters, delete.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Nimbus } from "../../dist/index.js";
import { adminCall, startServer } from "../support/server.mjs";

const workerBackend = (name) => ({
  kind: "sandbox",
  sandbox: {
    owner: { kind: "service", serviceName: name },
    backend: "container",
    root: { kind: "oci_image", source: { kind: "reference", reference: "busybox" } },
    process: { argv: ["sleep", "3600"], environment: { MODE: "test" } },
  },
});

describe("lifecycle calls against nimbus serve", () => {
  let server;
  let nimbus;
  before(async () => {
    server = await startServer();
    nimbus = new Nimbus({ endpoint: server.endpoint, token: server.token, tenantId: "demo", env: {} });
  });
  after(async () => server?.stop());

  test("start, restart and stop answer with the service and record the desired state", async () => {
    await nimbus.services.create({ name: "svc", backend: workerBackend("svc") });
    const started = await nimbus.services.start({ name: "svc" });
    assert.equal(started.metadata.name, "svc");
    assert.equal(started.status.desiredState, "running");
    const restarted = await nimbus.services.restart({ name: "svc" });
    assert.equal(restarted.status.desiredState, "running");
    const stopped = await nimbus.services.stop({ name: "svc" });
    assert.equal(stopped.status.desiredState, "stopped");
  });

  test("force deletes a started service and returns the final object", async () => {
    await nimbus.services.create({ name: "forced", backend: workerBackend("forced") });
    const started = await nimbus.services.start({ name: "forced" });
    const deleted = await nimbus.services.delete({ name: "forced", ifMatchGeneration: started.metadata.generation, force: true });
    assert.equal(deleted.metadata.name, "forced");
    await assert.rejects(nimbus.services.get({ name: "forced" }), { code: "resource.not_found" });
  });

  test("a session without a TTL gets 15 minutes; a TTL above an hour is clamped to it", async () => {
    const dflt = await nimbus.sessions.open({ target: { service: { name: "svc" } }, channels: ["files"] });
    assert.equal(dflt.spec.ttlMs, 15 * 60 * 1000);
    assert.equal(dflt.spec.requestedTtlMs, null);
    assert.equal(dflt.spec.ttlClamped, false);
    const long = await nimbus.sessions.open({ target: { service: { name: "svc" } }, channels: ["stdio", "files"], requestedTtlMs: 2 * 60 * 60 * 1000 });
    assert.equal(long.spec.ttlMs, 60 * 60 * 1000);
    assert.equal(long.spec.ttlClamped, true);
    assert.equal(Date.parse(long.spec.expiresAt) - Date.parse(long.metadata.createdAt), 60 * 60 * 1000);
    const open = await nimbus.sessions.list({ state: "open" });
    assert.deepEqual(open.items.map((s) => s.metadata.id).sort(), [dflt.metadata.id, long.metadata.id].sort());
    const closed = await nimbus.sessions.close({ id: long.metadata.id, reason: "test over" });
    assert.equal(closed.status.lifecycleState, "closed");
    assert.equal(closed.status.closeReason, "test over");
  });

  test("a call's tenantId reaches another tenant", async () => {
    await adminCall(server, "POST", "/v1/tenants", { name: "team-b" });
    await nimbus.services.create({ name: "lb", backend: { kind: "builtIn", provider: "loadBalancer" }, tenantId: "team-b" });
    const there = await nimbus.services.list({ tenantId: "team-b" });
    assert.deepEqual(there.items.map((s) => s.metadata.tenantId), ["team-b"]);
    await assert.rejects(nimbus.services.get({ name: "lb" }), { code: "resource.not_found" });
  });

  test("sandboxes.wait returns once a sandbox ended and refuses ready after that at once", async () => {
    const spec = {
      owner: { kind: "standalone", displayName: "wait-me" },
      backend: "container",
      root: { kind: "oci_image", source: { kind: "reference", reference: "busybox" } },
      process: { argv: ["true"] },
    };
    const sbx = await nimbus.sandboxes.create({ profile: "worker", spec });
    const id = sbx.metadata.id;
    // `true` exits at once, or the image cannot be pulled here: either way the sandbox ends.
    const ended = await nimbus.sandboxes.wait({ id, until: "stopped", timeoutMs: 60_000 });
    assert.ok(["stopped", "failed"].includes(ended.status.lifecycleState), ended.status.lifecycleState);
    const asked = Date.now();
    await assert.rejects(nimbus.sandboxes.wait({ id, until: "ready", timeoutMs: 60_000 }), (err) => {
      assert.equal(err.code, "client.condition_unreachable");
      assert.match(err.message, new RegExp(`sandbox ${id} will not become ready: it has ended; last observed status: lifecycleState=`));
      assert.equal(err.details.lastStatus.lifecycleState, ended.status.lifecycleState);
      return true;
    });
    assert.ok(Date.now() - asked < 5000, "an ended sandbox is not waited for");
    await assert.rejects(nimbus.sandboxes.wait({ id, until: "running" }), { code: "client.invalid_argument" });
    await nimbus.sandboxes.delete({ id });
  });

  test("sandboxes filter by state, stop, and delete", async () => {
    const spec = {
      owner: { kind: "standalone", displayName: "filter-me" },
      backend: "container",
      root: { kind: "oci_image", source: { kind: "reference", reference: "busybox" } },
      process: { argv: ["sleep", "3600"] },
    };
    const sbx = await nimbus.sandboxes.create({ profile: "desktop", spec, labels: { tier: "x" } });
    assert.equal(sbx.spec.profile, "desktop");
    assert.equal(sbx.status.readiness, "notReady");
    assert.deepEqual(sbx.status.endpoints, []);
    // The controller moves a new sandbox along (pending, creating, then ready or failed); filter
    // once it has settled, so the state cannot change between the read and the list.
    const settled = ["ready", "failed", "stopped"];
    let state = sbx.status.lifecycleState;
    for (let i = 0; i < 600 && !settled.includes(state); i++) {
      await new Promise((r) => setTimeout(r, 100));
      state = (await nimbus.sandboxes.get({ id: sbx.metadata.id })).status.lifecycleState;
    }
    assert.ok(settled.includes(state), `the sandbox did not settle within 60 s; last state ${state}`);
    const same = await nimbus.sandboxes.list({ state });
    assert.ok(same.items.some((s) => s.metadata.id === sbx.metadata.id), `listed under its state ${state}`);
    assert.ok(same.items.every((s) => s.status.lifecycleState === state));
    const other = state === "pending" ? "creating" : "pending";
    assert.ok(!(await nimbus.sandboxes.list({ state: other })).items.some((s) => s.metadata.id === sbx.metadata.id));
    await assert.rejects(nimbus.sandboxes.list({ state: "running" }), { code: "request.invalid_argument" });
    const stopping = await nimbus.sandboxes.stop({ id: sbx.metadata.id });
    assert.equal(stopping.metadata.id, sbx.metadata.id);
    const deleted = await nimbus.sandboxes.delete({ id: sbx.metadata.id });
    assert.equal(deleted.metadata.id, sbx.metadata.id);
    await assert.rejects(nimbus.sandboxes.get({ id: sbx.metadata.id }), { code: "resource.not_found" });
  });
});
