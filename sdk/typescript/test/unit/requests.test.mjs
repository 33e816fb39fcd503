// Every SDK call sends the request the HTTP contract fixes: method, path, query, body, headers.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Nimbus, NimbusError } from "../../dist/index.js";
import { errorBody, fakeFetch, json, service } from "../support/fake-fetch.mjs";

function client(answers) {
  const { fetch, calls } = fakeFetch(answers ?? [json(200, service())]);
  const nimbus = new Nimbus({ endpoint: "http://h:1", token: "tok", tenantId: "demo", fetch, env: {} });
  return { nimbus, calls };
}

const sandboxBackend = {
  kind: "sandbox",
  sandbox: {
    owner: { kind: "service", serviceName: "worker" },
    backend: "container",
    root: { kind: "oci_image", source: { kind: "reference", reference: "busybox" } },
    process: { argv: ["sh"] },
  },
};

function path(call) {
  return `${call.method} ${call.url.pathname}${call.url.search}`;
}

describe("services requests", () => {
  test("create posts {name, backend, labels} and nothing else", async () => {
    const { nimbus, calls } = client();
    await nimbus.services.create({ name: "worker", backend: sandboxBackend, labels: { team: "search" }, tenantId: "demo" });
    assert.equal(path(calls[0]), "POST /v1/tenants/demo/services");
    assert.deepEqual(calls[0].body, { name: "worker", backend: sandboxBackend, labels: { team: "search" } });
    assert.equal(calls[0].headers["content-type"], "application/json");
    assert.equal(calls[0].headers.accept, "application/json");
    assert.equal(calls[0].headers.authorization, "Bearer tok");
  });

  test("get, list, update, delete and the verbs use the documented paths", async () => {
    const { nimbus, calls } = client();
    await nimbus.services.get({ name: "worker" });
    await nimbus.services.list();
    await nimbus.services.list({ limit: 20, pageToken: "abc=" });
    await nimbus.services.update({ name: "worker", labels: { a: "b" }, ifMatchGeneration: 3 });
    await nimbus.services.delete({ name: "worker", ifMatchGeneration: 4 });
    await nimbus.services.delete({ name: "worker", ifMatchGeneration: 4, force: true });
    await nimbus.services.start({ name: "worker" });
    await nimbus.services.stop({ name: "worker" });
    await nimbus.services.restart({ name: "worker" });
    await nimbus.services.update({ name: "worker", labels: { a: "c" }, ifMatchGeneration: 3, ifMatchResourceVersion: "17" });
    assert.deepEqual(calls.map(path), [
      "GET /v1/tenants/demo/services/worker",
      "GET /v1/tenants/demo/services",
      "GET /v1/tenants/demo/services?limit=20&pageToken=abc%3D",
      "PUT /v1/tenants/demo/services/worker",
      "DELETE /v1/tenants/demo/services/worker?ifMatchGeneration=4",
      "DELETE /v1/tenants/demo/services/worker?ifMatchGeneration=4&force=true",
      "POST /v1/tenants/demo/services/worker/start",
      "POST /v1/tenants/demo/services/worker/stop",
      "POST /v1/tenants/demo/services/worker/restart",
      "PUT /v1/tenants/demo/services/worker",
    ]);
    assert.deepEqual(calls[3].body, { labels: { a: "b" }, ifMatchGeneration: 3 });
    // Labels do not move the generation: the resource version guards their read-modify-write.
    assert.deepEqual(calls[9].body, { labels: { a: "c" }, ifMatchGeneration: 3, ifMatchResourceVersion: "17" });
    for (const c of [calls[0], calls[4], calls[6]]) assert.equal(c.body, undefined);
  });

  test("names are encoded as one path segment", async () => {
    const { nimbus, calls } = client();
    await nimbus.services.get({ name: "a/../b" });
    assert.equal(calls[0].url.pathname, "/v1/tenants/demo/services/a%2F..%2Fb");
  });

  test("a missing name or generation is refused before any request", async () => {
    const { nimbus, calls } = client();
    await assert.rejects(nimbus.services.get({}), { code: "client.invalid_argument" });
    await assert.rejects(nimbus.services.update({ name: "worker" }), (e) => e.code === "client.invalid_argument" && /ifMatchGeneration/.test(e.message));
    await assert.rejects(nimbus.services.delete({ name: "worker", ifMatchGeneration: "3" }), { code: "client.invalid_argument" });
    await assert.rejects(nimbus.services.update({ name: "worker", labels: {}, ifMatchGeneration: 0 }), (e) => e.code === "client.invalid_argument" && /generations start at 1/.test(e.message));
    assert.equal(calls.length, 0);
  });

  test("listAll follows nextPageToken until it is absent or empty", async () => {
    const { nimbus, calls } = client([
      json(200, { items: [service({ metadata: { name: "a" } })], metadata: { nextPageToken: "p2" } }),
      json(200, { items: [service({ metadata: { name: "b" } })], metadata: { nextPageToken: "" } }),
    ]);
    const names = [];
    for await (const s of nimbus.services.listAll({ limit: 1 })) names.push(s.metadata.name);
    assert.deepEqual(names, ["a", "b"]);
    assert.deepEqual(calls.map(path), ["GET /v1/tenants/demo/services?limit=1", "GET /v1/tenants/demo/services?limit=1&pageToken=p2"]);
  });
});

describe("sandboxes requests", () => {
  test("create, get, list, stop, delete and logs use the documented paths", async () => {
    const { nimbus, calls } = client((req) =>
      req.url.pathname.endsWith("/logs") ? new Response("hello\nworld\n", { status: 200, headers: { "content-type": "text/plain" } }) : json(200, {}),
    );
    const spec = {
      owner: { kind: "standalone", displayName: "batch-job" },
      backend: "container",
      root: { kind: "rootfs", path: "/srv/root" },
      process: { argv: ["python", "job.py"], environment: { A: "1" } },
      network: { egress: { default: "deny", allow: [{ cidr: "10.213.0.2/32", ports: [8000] }] } },
      resources: { memoryMb: 256, pids: 64, cpus: 0.5 },
    };
    await nimbus.sandboxes.create({ profile: "worker", spec, labels: { purpose: "batch" } });
    await nimbus.sandboxes.get({ id: "sbx_1" });
    await nimbus.sandboxes.list({ labelKey: "purpose", labelValue: "batch", state: "ready", limit: 5, pageToken: "t" });
    await nimbus.sandboxes.stop({ id: "sbx_1" });
    await nimbus.sandboxes.delete({ id: "sbx_1", tenantId: "other" });
    const logs = await nimbus.sandboxes.logs({ id: "sbx_1" });
    assert.equal(logs, "hello\nworld\n");
    assert.deepEqual(calls.map(path), [
      "POST /v1/tenants/demo/sandboxes",
      "GET /v1/tenants/demo/sandboxes/sbx_1",
      "GET /v1/tenants/demo/sandboxes?labelKey=purpose&labelValue=batch&state=ready&limit=5&pageToken=t",
      "POST /v1/tenants/demo/sandboxes/sbx_1/stop",
      "DELETE /v1/tenants/other/sandboxes/sbx_1",
      "GET /v1/tenants/demo/sandboxes/sbx_1/logs",
    ]);
    assert.deepEqual(calls[0].body, { profile: "worker", spec, labels: { purpose: "batch" } });
    assert.match(calls[5].headers.accept, /text\/plain/);
  });

  test("an empty label value is sent (it is a real value); an empty pageToken means the first page", async () => {
    const { nimbus, calls } = client([json(200, { items: [], metadata: { nextPageToken: "" } })]);
    await nimbus.sandboxes.list({ labelKey: "tier", labelValue: "", pageToken: "" });
    assert.equal(path(calls[0]), "GET /v1/tenants/demo/sandboxes?labelKey=tier&labelValue=");
  });
});

describe("sessions requests", () => {
  test("open, get, list and close use the documented paths and bodies", async () => {
    const { nimbus, calls } = client([json(201, {})]);
    await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"], requestedTtlMs: 600000 });
    await nimbus.sessions.open({ target: { sandbox: { id: "sbx_1" } }, channels: ["files"] });
    await nimbus.sessions.get({ id: "ses_1" });
    await nimbus.sessions.list({ state: "open" });
    await nimbus.sessions.close({ id: "ses_1", reason: "done" });
    assert.deepEqual(calls.map(path), [
      "POST /v1/tenants/demo/sessions",
      "POST /v1/tenants/demo/sessions",
      "GET /v1/tenants/demo/sessions/ses_1",
      "GET /v1/tenants/demo/sessions?state=open",
      "POST /v1/tenants/demo/sessions/ses_1/close",
    ]);
    assert.deepEqual(calls[0].body, { target: { service: { name: "worker" } }, channels: ["stdio"], requestedTtlMs: 600000 });
    assert.deepEqual(calls[1].body, { target: { sandbox: { id: "sbx_1" } }, channels: ["files"] });
    assert.deepEqual(calls[4].body, { reason: "done" });
  });
});

describe("errors", () => {
  test("a server error becomes a NimbusError with its code, message, details and status", async () => {
    const { nimbus } = client([
      errorBody(412, "op.precondition_failed", 'service "worker" is at generation 4, not 3; re-read it and retry', {
        kind: "service",
        name: "worker",
        currentGeneration: 4,
      }),
    ]);
    const err = await nimbus.services.update({ name: "worker", labels: {}, ifMatchGeneration: 3 }).catch((e) => e);
    assert.ok(err instanceof NimbusError);
    assert.ok(err instanceof Error);
    assert.equal(err.name, "NimbusError");
    assert.equal(err.code, "op.precondition_failed");
    assert.equal(err.status, 412);
    assert.equal(err.message, 'service "worker" is at generation 4, not 3; re-read it and retry');
    assert.deepEqual(err.details, { kind: "service", name: "worker", currentGeneration: 4 });
  });

  test("an error response without the envelope is client.invalid_response with the status", async () => {
    const { nimbus } = client([new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" })]);
    const err = await nimbus.services.get({ name: "worker" }).catch((e) => e);
    assert.equal(err.code, "client.invalid_response");
    assert.equal(err.status, 502);
    assert.match(err.message, /502/);
    assert.match(err.message, /bad gateway/);
  });

  test("a 2xx body that is not JSON is client.invalid_response", async () => {
    const { nimbus } = client([new Response("not json", { status: 200 })]);
    await assert.rejects(nimbus.services.get({ name: "worker" }), { code: "client.invalid_response", status: 200 });
  });

  test("a connection failure is client.network naming the endpoint and the cause", async () => {
    const cause = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    const { nimbus } = client([new TypeError("fetch failed", { cause })]);
    const err = await nimbus.services.get({ name: "worker" }).catch((e) => e);
    assert.ok(err instanceof NimbusError);
    assert.equal(err.code, "client.network");
    assert.equal(err.status, undefined);
    assert.match(err.message, /http:\/\/h:1/);
    assert.match(err.message, /ECONNREFUSED/);
    assert.equal(err.details.cause, "ECONNREFUSED");
    assert.equal(err.cause.message, "fetch failed");
  });

  test("an aborted call is client.aborted", async () => {
    const controller = new AbortController();
    controller.abort();
    const { nimbus } = client([(req) => {
      if (req.signal?.aborted) throw new DOMException("aborted", "AbortError");
      return json(200, service());
    }]);
    await assert.rejects(nimbus.services.get({ name: "worker", signal: controller.signal }), { code: "client.aborted" });
  });
});
