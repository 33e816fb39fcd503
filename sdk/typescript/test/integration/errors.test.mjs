// The server's structured errors reach callers as NimbusError with the server's code, message,
// details and HTTP status; transport failures as client.network.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Nimbus, NimbusError } from "../../dist/index.js";
import { adminCall, startServer } from "../support/server.mjs";

const builtIn = { kind: "builtIn", provider: "loadBalancer" };

async function failure(promise) {
  return promise.then(
    (v) => assert.fail(`expected an error, got ${JSON.stringify(v)}`),
    (e) => e,
  );
}

describe("error paths against nimbus serve", () => {
  let server;
  let nimbus;
  before(async () => {
    server = await startServer();
    nimbus = new Nimbus({ endpoint: server.endpoint, token: server.token, tenantId: "demo", env: {} });
  });
  after(async () => server?.stop());

  test("a stale ifMatchGeneration is op.precondition_failed naming the current generation", async () => {
    await nimbus.services.create({ name: "lb", backend: builtIn });
    const current = await nimbus.services.get({ name: "lb" });
    await nimbus.services.update({ name: "lb", labels: { v: "2" }, backend: { kind: "builtIn", provider: "serviceDiscovery" }, ifMatchGeneration: current.metadata.generation });
    const err = await failure(nimbus.services.update({ name: "lb", backend: builtIn, ifMatchGeneration: current.metadata.generation }));
    assert.ok(err instanceof NimbusError);
    assert.equal(err.code, "op.precondition_failed");
    assert.equal(err.status, 412);
    assert.equal(err.details.currentGeneration, current.metadata.generation + 1);
    assert.match(err.message, new RegExp(String(current.metadata.generation + 1)));
    const del = await failure(nimbus.services.delete({ name: "lb", ifMatchGeneration: current.metadata.generation }));
    assert.equal(del.code, "op.precondition_failed");
  });

  test("an update that changes only labels keeps the generation; a spec change bumps it", async () => {
    await nimbus.services.create({ name: "gen", backend: builtIn });
    const a = await nimbus.services.get({ name: "gen" });
    const b = await nimbus.services.update({ name: "gen", labels: { x: "y" }, ifMatchGeneration: a.metadata.generation });
    assert.equal(b.metadata.generation, a.metadata.generation);
    assert.notEqual(b.metadata.resourceVersion, a.metadata.resourceVersion);
    const c = await nimbus.services.update({ name: "gen", backend: { kind: "builtIn", provider: "browser" }, ifMatchGeneration: b.metadata.generation });
    assert.equal(c.metadata.generation, a.metadata.generation + 1);
  });

  test("a missing service is resource.not_found", async () => {
    const err = await failure(nimbus.services.get({ name: "does-not-exist" }));
    assert.equal(err.code, "resource.not_found");
    assert.equal(err.status, 404);
    const sbx = await failure(nimbus.sandboxes.get({ id: "sbx_00000000000000000000000000" }));
    assert.equal(sbx.code, "resource.not_found");
  });

  test("a taken name is resource.already_exists", async () => {
    await nimbus.services.create({ name: "twice", backend: builtIn });
    const err = await failure(nimbus.services.create({ name: "twice", backend: builtIn }));
    assert.equal(err.code, "resource.already_exists");
    assert.equal(err.status, 409);
  });

  test("an unknown token is auth.unauthenticated", async () => {
    const stranger = new Nimbus({ endpoint: server.endpoint, token: "not-a-real-token", tenantId: "demo", env: {} });
    const err = await failure(stranger.services.list());
    assert.equal(err.code, "auth.unauthenticated");
    assert.equal(err.status, 401);
    const key = new Nimbus({ endpoint: server.endpoint, apiKey: "not-a-real-key", tenantId: "demo", env: {} });
    assert.equal((await failure(key.services.list())).code, "auth.unauthenticated");
  });

  test("bad names and bad enum values are request.invalid_argument", async () => {
    const bad = await failure(nimbus.services.create({ name: "Not_A_Name", backend: builtIn }));
    assert.equal(bad.code, "request.invalid_argument");
    assert.equal(bad.status, 400);
    const provider = await failure(nimbus.services.create({ name: "ftp", backend: { kind: "builtIn", provider: "ftp" } }));
    assert.equal(provider.code, "request.invalid_argument");
    const owner = await failure(
      nimbus.services.create({
        name: "mismatch",
        backend: {
          kind: "sandbox",
          sandbox: {
            owner: { kind: "service", serviceName: "someone-else" },
            backend: "container",
            root: { kind: "oci_image", source: { kind: "reference", reference: "busybox" } },
            process: { argv: ["true"] },
          },
        },
      }),
    );
    assert.equal(owner.code, "request.invalid_argument");
    // From JavaScript nothing stops a typo; the server rejects unknown fields instead of ignoring them.
    const typo = await failure(nimbus.services.create({ name: "typo", backend: { kind: "builtIn", provider: "browser", provder: "x" } }));
    assert.equal(typo.code, "request.invalid_argument");
    assert.match(typo.message, /provder/);
  });

  test("a credential of another tenant is auth.permission_denied, before existence", async () => {
    await adminCall(server, "POST", "/v1/tenants", { name: "other" });
    const cred = await adminCall(server, "POST", "/v1/tenants/other/credentials", { kind: "token", grants: ["tenant:admin"] });
    assert.equal(typeof cred.secret, "string");
    const other = new Nimbus({ endpoint: server.endpoint, token: cred.secret, tenantId: "other", env: {} });
    assert.deepEqual((await other.services.list()).items, []);
    for (const name of ["twice", "never-existed"]) {
      const err = await failure(other.services.get({ name, tenantId: "demo" }));
      assert.equal(err.code, "auth.permission_denied", name);
      assert.equal(err.status, 403);
    }
  });

  test("a session on a sandbox that is not ready is state.invalid_transition", async () => {
    const sandbox = await nimbus.sandboxes.create({
      profile: "worker",
      spec: {
        owner: { kind: "standalone" },
        backend: "container",
        root: { kind: "oci_image", source: { kind: "reference", reference: "busybox" } },
        process: { argv: ["sleep", "60"] },
      },
    });
    const err = await failure(nimbus.sessions.open({ target: { sandbox: { id: sandbox.metadata.id } }, channels: ["stdio"] }));
    assert.equal(err.code, "state.invalid_transition");
    assert.equal(err.status, 409);
  });

  test("a channel the target cannot offer is request.invalid_argument naming it", async () => {
    const err = await failure(nimbus.sessions.open({ target: { service: { name: "twice" } }, channels: ["stdio"] }));
    assert.equal(err.code, "request.invalid_argument");
    assert.match(err.message, /stdio/);
  });

  test("a session on a service that does not exist is resource.not_found", async () => {
    const err = await failure(nimbus.sessions.open({ target: { service: { name: "ghost" } }, channels: ["stdio"] }));
    assert.equal(err.code, "resource.not_found");
  });

  test("a server that is not there is client.network", async () => {
    await nimbus.services.list(); // the real server answers...
    const gone = new Nimbus({ endpoint: "http://127.0.0.1:9", token: server.token, tenantId: "demo", env: {} });
    const err = await failure(gone.services.list());
    assert.ok(err instanceof NimbusError);
    assert.equal(err.code, "client.network");
    assert.equal(err.status, undefined);
    assert.match(err.message, /127\.0\.0\.1:9/);
  });

  test("lists page with limit and pageToken until nextPageToken runs out", async () => {
    for (const name of ["page-a", "page-b", "page-c"]) await nimbus.services.create({ name, backend: builtIn });
    const all = (await nimbus.services.list()).items.map((s) => s.metadata.name);
    const paged = [];
    let pageToken;
    let pages = 0;
    do {
      const page = await nimbus.services.list({ limit: 2, pageToken });
      assert.ok(page.items.length <= 2);
      paged.push(...page.items.map((s) => s.metadata.name));
      pageToken = page.metadata.nextPageToken;
      pages++;
    } while (pageToken);
    assert.deepEqual(paged, all);
    assert.ok(pages >= 2);
    const iterated = [];
    for await (const s of nimbus.services.listAll({ limit: 1 })) iterated.push(s.metadata.name);
    assert.deepEqual(iterated, all);
    const badToken = await failure(nimbus.services.list({ pageToken: "garbage!" }));
    assert.equal(badToken.code, "request.invalid_argument");
  });

  test("sandbox logs come back as text", async () => {
    const sandbox = (await nimbus.sandboxes.list()).items[0];
    const logs = await nimbus.sandboxes.logs({ id: sandbox.metadata.id });
    assert.equal(typeof logs, "string");
    const deleted = await nimbus.sandboxes.delete({ id: sandbox.metadata.id });
    assert.equal(deleted.metadata.id, sandbox.metadata.id);
    assert.equal((await failure(nimbus.sandboxes.get({ id: sandbox.metadata.id }))).code, "resource.not_found");
  });
});
