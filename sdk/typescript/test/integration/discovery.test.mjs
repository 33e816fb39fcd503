// Discovery against a real server: the credential file the server writes on first start, API
// keys, bearer tokens in the environment, and workload identity token files.
import assert from "node:assert/strict";
import { copyFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { Nimbus } from "../../dist/index.js";
import { adminCall, startServer } from "../support/server.mjs";

describe("discovery against nimbus serve", () => {
  let server;
  let empty;
  before(async () => {
    server = await startServer();
    empty = await mkdtemp(join(tmpdir(), "nimbus-sdk-empty-home-"));
  });
  after(async () => {
    await server?.stop();
    if (empty) await rm(empty, { recursive: true, force: true });
  });

  test("the server's credential file alone configures a client: endpoint, token and tenant", async () => {
    assert.equal(new URL(server.fileEndpoint).origin, server.endpoint, "the file names the address the server listens on");
    assert.equal(server.tenantId, "demo");
    const nimbus = new Nimbus({ env: { HOME: server.home } });
    const settings = await nimbus.settings();
    assert.equal(settings.tenantId, "demo");
    assert.match(settings.credentialSource, /credential file/);
    const page = await nimbus.services.list();
    assert.ok(Array.isArray(page.items));
  });

  test("NIMBUS_APPLICATION_CREDENTIALS points at a moved credential file", async () => {
    const moved = join(empty, "moved.json");
    await copyFile(server.credentialFile, moved);
    const nimbus = new Nimbus({ env: { HOME: empty, NIMBUS_APPLICATION_CREDENTIALS: moved } });
    assert.ok(Array.isArray((await nimbus.services.list()).items));
  });

  test("NIMBUS_ENDPOINT with NIMBUS_BEARER_TOKEN works", async () => {
    const nimbus = new Nimbus({ tenantId: "demo", env: { HOME: empty, NIMBUS_ENDPOINT: server.endpoint, NIMBUS_BEARER_TOKEN: server.token } });
    assert.ok(Array.isArray((await nimbus.services.list()).items));
  });

  test("an API key from NIMBUS_API_KEY is accepted as X-Nimbus-Api-Key", async () => {
    const cred = await adminCall(server, "POST", "/v1/tenants/demo/credentials", { kind: "apiKey", grants: ["tenant:admin"] });
    const nimbus = new Nimbus({ tenantId: "demo", env: { HOME: empty, NIMBUS_ENDPOINT: server.endpoint, NIMBUS_API_KEY: cred.secret } });
    assert.ok(Array.isArray((await nimbus.services.list()).items));
    const asOption = new Nimbus({ endpoint: server.endpoint, tenantId: "demo", apiKey: cred.secret, env: {} });
    assert.ok(Array.isArray((await asOption.services.list()).items));
  });

  test("a token read from NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE is sent as a bearer token", async () => {
    const file = join(empty, "token");
    await writeFile(file, `${server.token}\n`);
    const nimbus = new Nimbus({ tenantId: "demo", env: { HOME: empty, NIMBUS_ENDPOINT: server.endpoint, NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE: file } });
    assert.match((await nimbus.settings()).credentialSource, /NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE/);
    assert.ok(Array.isArray((await nimbus.services.list()).items));
  });

  test("with nothing to discover the first request says what to set", async () => {
    const nimbus = new Nimbus({ env: { HOME: empty } });
    await assert.rejects(nimbus.services.list(), (err) => {
      assert.equal(err.code, "client.not_configured");
      assert.match(err.message, /NIMBUS_ENDPOINT/);
      assert.match(err.message, /NIMBUS_TOKEN/);
      return true;
    });
  });
});
