// waitUntil and wait: client-side polls of GET /services/{name}.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Nimbus } from "../../dist/index.js";
import { errorBody, fakeFetch, json, service } from "../support/fake-fetch.mjs";

function client(answers) {
  const { fetch, calls } = fakeFetch(answers);
  const nimbus = new Nimbus({ endpoint: "http://h:1", token: "tok", tenantId: "demo", fetch, env: {} });
  return { nimbus, calls };
}

const starting = service({ status: { lifecycleState: "starting", readiness: "notReady", health: "unknown" } });
const ready = service({ status: { lifecycleState: "running", readiness: "ready", health: "unknown" } });
const healthy = service({ status: { lifecycleState: "running", readiness: "ready", health: "healthy" } });

describe("wait", () => {
  test("returns the service once it is ready", async () => {
    const { nimbus, calls } = client([json(200, starting), json(200, starting), json(200, ready)]);
    const s = await nimbus.services.wait({ name: "worker", until: "ready", intervalMs: 1 });
    assert.equal(s.status.readiness, "ready");
    assert.equal(calls.length, 3);
    assert.ok(calls.every((c) => c.method === "GET" && c.url.pathname === "/v1/tenants/demo/services/worker"));
  });

  test("healthy needs health, not just readiness", async () => {
    const { nimbus, calls } = client([json(200, ready), json(200, healthy)]);
    await nimbus.services.wait({ name: "worker", until: "healthy", intervalMs: 1 });
    assert.equal(calls.length, 2);
  });

  test("stopped accepts stopped and declared", async () => {
    for (const lifecycleState of ["stopped", "declared"]) {
      const { nimbus, calls } = client([json(200, service({ status: { lifecycleState: "stopping" } })), json(200, service({ status: { lifecycleState } }))]);
      const s = await nimbus.services.wait({ name: "worker", until: "stopped", intervalMs: 1 });
      assert.equal(s.status.lifecycleState, lifecycleState);
      assert.equal(calls.length, 2);
    }
  });

  test("stopped holds at once for an external service, which Nimbus never runs", async () => {
    const backend = { kind: "external", endpoint: { url: "http://search:9200" }, auth: { kind: "none" }, health: { kind: "http", path: "/" } };
    const { nimbus, calls } = client([json(200, service({ backend, status: { lifecycleState: "running", readiness: "ready", health: "healthy" } }))]);
    const s = await nimbus.services.wait({ name: "search", until: "stopped", intervalMs: 1 });
    assert.equal(s.status.lifecycleState, "running");
    assert.equal(calls.length, 1);
  });

  test("a status observed for an older generation does not count", async () => {
    const stale = service({ metadata: { generation: 2 }, status: { readiness: "ready", observedGeneration: 1 } });
    const fresh = service({ metadata: { generation: 2 }, status: { readiness: "ready", observedGeneration: 2 } });
    const { nimbus, calls } = client([json(200, stale), json(200, fresh)]);
    await nimbus.services.wait({ name: "worker", until: "ready", intervalMs: 1 });
    assert.equal(calls.length, 2);
  });

  test("the deadline throws client.deadline_exceeded with the last observed status", async () => {
    const failing = service({
      status: {
        lifecycleState: "failed",
        readiness: "notReady",
        health: "unknown",
        conditions: [{ type: "Ready", status: "False", reason: "ImagePullFailed", message: "registry unreachable", lastTransitionTime: "2026-01-01T00:00:00Z", observedGeneration: 1 }],
      },
    });
    const { nimbus, calls } = client([json(200, failing)]);
    const err = await nimbus.services.wait({ name: "worker", until: "ready", timeoutMs: 500, intervalMs: 5 }).catch((e) => e);
    assert.equal(err.code, "client.deadline_exceeded");
    assert.equal(err.status, undefined);
    assert.match(err.message, /service "worker" in tenant "demo" did not become ready within 500 ms/);
    assert.match(err.message, /last observed status: lifecycleState=failed readiness=notReady health=unknown/);
    assert.match(err.message, /Ready=False \(ImagePullFailed: registry unreachable\)/);
    assert.deepEqual(err.details.lastStatus, failing.status);
    assert.ok(calls.length >= 2, "it polled more than once before giving up");
  });

  test("a server error while polling is thrown at once", async () => {
    const { nimbus, calls } = client([errorBody(404, "resource.not_found", 'service "worker" not found')]);
    await assert.rejects(nimbus.services.wait({ name: "worker", until: "ready", intervalMs: 1 }), { code: "resource.not_found", status: 404 });
    assert.equal(calls.length, 1);
  });

  test("bad options are refused before any request", async () => {
    const { nimbus, calls } = client([json(200, ready)]);
    await assert.rejects(nimbus.services.wait({ name: "worker", until: "running" }), { code: "client.invalid_argument" });
    await assert.rejects(nimbus.services.wait({ name: "worker", until: "ready", timeoutMs: 0 }), { code: "client.invalid_argument" });
    await assert.rejects(nimbus.services.wait({ name: "worker", until: "ready", intervalMs: -1 }), { code: "client.invalid_argument" });
    assert.equal(calls.length, 0);
  });

  test("an abort during the poll stops it with client.aborted", async () => {
    const controller = new AbortController();
    const { nimbus } = client([json(200, starting)]);
    setTimeout(() => controller.abort(), 20);
    await assert.rejects(
      nimbus.services.wait({ name: "worker", until: "ready", intervalMs: 5, timeoutMs: 10_000, signal: controller.signal }),
      { code: "client.aborted" },
    );
  });
});

describe("waitUntil on start, stop and restart", () => {
  test("start without waitUntil sends one POST and returns the accepted object", async () => {
    const { nimbus, calls } = client([json(202, starting)]);
    const s = await nimbus.services.start({ name: "worker" });
    assert.equal(s.status.lifecycleState, "starting");
    assert.deepEqual(calls.map((c) => c.method), ["POST"]);
  });

  test("start with waitUntil ready posts, then polls until ready", async () => {
    const { nimbus, calls } = client([json(202, starting), json(200, starting), json(200, ready)]);
    const s = await nimbus.services.start({ name: "worker", waitUntil: "ready", intervalMs: 1 });
    assert.equal(s.status.readiness, "ready");
    assert.deepEqual(calls.map((c) => `${c.method} ${c.url.pathname}`), [
      "POST /v1/tenants/demo/services/worker/start",
      "GET /v1/tenants/demo/services/worker",
      "GET /v1/tenants/demo/services/worker",
    ]);
  });

  test("restart with waitUntil healthy and stop with waitUntil stopped poll too", async () => {
    const r = client([json(202, starting), json(200, healthy)]);
    await r.nimbus.services.restart({ name: "worker", waitUntil: "healthy", intervalMs: 1 });
    assert.deepEqual(r.calls.map((c) => c.method), ["POST", "GET"]);
    const s = client([json(202, service({ status: { lifecycleState: "stopping" } })), json(200, service({ status: { lifecycleState: "stopped" } }))]);
    await s.nimbus.services.stop({ name: "worker", waitUntil: "stopped", intervalMs: 1 });
    assert.deepEqual(s.calls.map((c) => `${c.method} ${c.url.pathname}`), ["POST /v1/tenants/demo/services/worker/stop", "GET /v1/tenants/demo/services/worker"]);
  });

  test("a waitUntil the verb does not accept is refused before any request", async () => {
    const { nimbus, calls } = client([json(202, starting)]);
    await assert.rejects(nimbus.services.stop({ name: "worker", waitUntil: "ready" }), { code: "client.invalid_argument" });
    await assert.rejects(nimbus.services.start({ name: "worker", waitUntil: "stopped" }), { code: "client.invalid_argument" });
    assert.equal(calls.length, 0);
  });
});
