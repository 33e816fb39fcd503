// The SDK and the server's own OpenAPI document agree: every route an SDK call uses is served,
// and every error code the server can return is one the SDK knows.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Nimbus, SERVER_ERROR_CODES } from "../../dist/index.js";
import { fakeFetch, json } from "../support/fake-fetch.mjs";
import { startServer } from "../support/server.mjs";

/** Every SDK call once, through a recording fetch, as OpenAPI path templates. */
async function sdkRoutes() {
  const { fetch, calls } = fakeFetch((req) =>
    req.url.pathname.endsWith("/logs") ? new Response("", { status: 200 }) : json(200, { items: [], metadata: {} }),
  );
  const n = new Nimbus({ endpoint: "http://sdk:1", token: "t", tenantId: "T", fetch, env: {} });
  const backend = { kind: "builtIn", provider: "browser" };
  await n.services.create({ name: "N", backend });
  await n.services.get({ name: "N" });
  await n.services.list();
  await n.services.update({ name: "N", backend, ifMatchGeneration: 1 });
  await n.services.delete({ name: "N", ifMatchGeneration: 1 });
  await n.services.start({ name: "N" });
  await n.services.stop({ name: "N" });
  await n.services.restart({ name: "N" });
  await n.sandboxes.create({ profile: "worker", spec: {} });
  await n.sandboxes.get({ id: "I" });
  await n.sandboxes.list();
  await n.sandboxes.stop({ id: "I" });
  await n.sandboxes.delete({ id: "I" });
  await n.sandboxes.logs({ id: "I" });
  await n.sessions.open({ target: { service: { name: "N" } }, channels: [] });
  await n.sessions.get({ id: "I" });
  await n.sessions.list();
  await n.sessions.close({ id: "I", reason: "r" });
  return calls.map((c) => ({
    method: c.method.toLowerCase(),
    path: c.url.pathname
      .replace("/tenants/T", "/tenants/{tenantId}")
      .replace("/services/N", "/services/{name}")
      .replace(/\/(sandboxes|sessions)\/I/, "/$1/{id}"),
  }));
}

describe("the SDK against the server's OpenAPI document", () => {
  let server;
  let doc;
  before(async () => {
    server = await startServer();
    const res = await fetch(`${server.endpoint}/v1/openapi.json`);
    assert.equal(res.status, 200);
    doc = await res.json();
  });
  after(async () => server?.stop());

  test("every route the SDK calls is in the server's OpenAPI paths", async () => {
    const missing = (await sdkRoutes()).filter(({ method, path }) => doc.paths?.[path]?.[method] === undefined);
    assert.deepEqual(missing, [], "routes the SDK uses but the server does not declare");
  });

  test("every error code the server declares is one the SDK knows", () => {
    const declared = doc.components?.schemas?.Error?.properties?.error?.properties?.code?.enum;
    assert.ok(Array.isArray(declared), "the OpenAPI Error schema lists its codes");
    assert.deepEqual(declared.filter((c) => !SERVER_ERROR_CODES.includes(c)), []);
  });
});
