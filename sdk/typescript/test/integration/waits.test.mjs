// The samples that wait for a service to become ready or healthy. Sandbox execution is not wired
// into the server yet and the sample image cannot be pulled here, so the honest outcome is the
// documented deadline error carrying the last observed status. The two samples run as written,
// with their own deadlines (30 s default and 60 s), side by side.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Nimbus } from "../../dist/index.js";
import { runExample, runExampleOk } from "../support/examples.mjs";
import { startServer } from "../support/server.mjs";

describe("waiting for a service", () => {
  let server;
  let nimbus;
  before(async () => {
    server = await startServer();
    nimbus = new Nimbus({ endpoint: server.endpoint, token: server.token, tenantId: "demo", env: {} });
    await runExampleOk(server, "01-create-sandbox-service");
  });
  after(async () => server?.stop());

  test("start with waitUntil and wait until healthy throw at their deadlines with the last status", async () => {
    const [start, wait] = await Promise.all([
      runExample(server, "04-start-wait-ready"),
      // Let the start land first, so the wait sample watches a started service.
      new Promise((r) => setTimeout(r, 1000)).then(() => runExample(server, "05-wait-healthy")),
    ]);
    for (const [r, until, ms] of [
      [start, "ready", 30000],
      [wait, "healthy", 60000],
    ]) {
      assert.notEqual(r.code, 0, `the ${until} sample must not succeed: ${r.stdout}`);
      assert.match(r.stderr, /client\.deadline_exceeded/);
      assert.match(r.stderr, new RegExp(`service "worker" in tenant "demo" did not become ${until} within ${ms} ms; last observed status: lifecycleState=\\w+ readiness=notReady health=\\w+`));
    }
    const worker = await nimbus.services.get({ name: "worker" });
    assert.equal(worker.status.desiredState ?? "running", "running", "start was accepted");
  });

  test("a short deadline reports the same way from the SDK", async () => {
    const err = await nimbus.services.start({ name: "worker", waitUntil: "ready", timeoutMs: 1500 }).catch((e) => e);
    assert.equal(err.code, "client.deadline_exceeded");
    assert.match(err.message, /last observed status: lifecycleState=/);
    assert.equal(err.details.lastStatus.readiness, "notReady");
  });

  test("deleting the started service needs force", async () => {
    const current = await nimbus.services.get({ name: "worker" });
    await assert.rejects(nimbus.services.delete({ name: "worker", ifMatchGeneration: current.metadata.generation }), {
      code: "state.invalid_transition",
      status: 409,
    });
  });

  test("stop with waitUntil stopped returns once the service is stopped", async () => {
    const stopped = await nimbus.services.stop({ name: "worker", waitUntil: "stopped", timeoutMs: 30_000 });
    assert.ok(["stopped", "declared"].includes(stopped.status.lifecycleState));
    const current = await nimbus.services.get({ name: "worker" });
    const deleted = await nimbus.services.delete({ name: "worker", ifMatchGeneration: current.metadata.generation });
    assert.equal(deleted.metadata.name, "worker");
  });
});
