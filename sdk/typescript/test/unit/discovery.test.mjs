// Discovery order, case by case, with a fake fetch: options, then environment variables, then
// the credential file, then a workload identity token file.
import assert from "node:assert/strict";
import { mkdtemp, mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";

import { Nimbus, NimbusError } from "../../dist/index.js";
import { fakeFetch, json, service } from "../support/fake-fetch.mjs";

async function emptyHome() {
  return mkdtemp(join(tmpdir(), "nimbus-sdk-home-"));
}

async function homeWithFile(content) {
  const home = await emptyHome();
  await mkdir(join(home, ".config", "nimbus"), { recursive: true });
  await writeFile(
    join(home, ".config", "nimbus", "application_default_credentials.json"),
    typeof content === "string" ? content : JSON.stringify(content),
  );
  return home;
}

/** Makes one `services.get` call and returns the request the client sent. */
async function sent(options) {
  const { fetch, calls } = fakeFetch([json(200, service())]);
  const nimbus = new Nimbus({ ...options, fetch });
  await nimbus.services.get({ name: "worker" });
  assert.equal(calls.length, 1);
  return calls[0];
}

async function notConfigured(options, ...mustMention) {
  const { fetch, calls } = fakeFetch([json(200, service())]);
  const nimbus = new Nimbus({ ...options, fetch });
  const err = await nimbus.services.get({ name: "worker" }).then(
    () => assert.fail("expected the call to throw"),
    (e) => e,
  );
  assert.ok(err instanceof NimbusError, String(err));
  assert.equal(err.code, "client.not_configured");
  assert.equal(err.status, undefined);
  for (const text of mustMention) assert.ok(err.message.includes(text), `"${err.message}" should mention ${text}`);
  assert.equal(calls.length, 0, "no request may be sent without a configuration");
  return err;
}

describe("tenant discovery", () => {
  test("NIMBUS_TENANT gives a token from the environment its tenant; the option wins over it", async () => {
    const env = { HOME: await emptyHome(), NIMBUS_ENDPOINT: "http://env:3", NIMBUS_TOKEN: "t-env", NIMBUS_TENANT: "team-a" };
    assert.equal((await sent({ env })).url.pathname, "/v1/tenants/team-a/services/worker");
    assert.equal((await sent({ env, tenantId: "team-b" })).url.pathname, "/v1/tenants/team-b/services/worker");
  });

  test("NIMBUS_TENANT wins over the credential file's tenant", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "demo" });
    const req = await sent({ env: { HOME: home, NIMBUS_TENANT: "team-a" } });
    assert.equal(req.url.pathname, "/v1/tenants/team-a/services/worker");
  });

  test("without any tenant, a call says every way to give one", async () => {
    const env = { HOME: await emptyHome(), NIMBUS_ENDPOINT: "http://env:3", NIMBUS_TOKEN: "t-env" };
    await notConfigured({ env }, "tenantId", "NIMBUS_TENANT");
  });
});

describe("endpoint discovery", () => {
  test("the endpoint option wins over NIMBUS_ENDPOINT and the credential file", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "demo" });
    const req = await sent({
      endpoint: "http://option:2",
      env: { HOME: home, NIMBUS_ENDPOINT: "http://env:3" },
      tenantId: "demo",
    });
    assert.equal(req.url.origin, "http://option:2");
  });

  test("NIMBUS_ENDPOINT is used when there is no option, before the file", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "demo" });
    const req = await sent({ env: { HOME: home, NIMBUS_ENDPOINT: "http://env:3" } });
    assert.equal(req.url.origin, "http://env:3");
  });

  test("the credential file's endpoint is used last", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "demo" });
    const req = await sent({ env: { HOME: home } });
    assert.equal(req.url.origin, "http://file:1");
    assert.equal(req.url.pathname, "/v1/tenants/demo/services/worker");
  });

  test("a path prefix is kept and a trailing slash dropped", async () => {
    const req = await sent({ endpoint: "http://proxy:9/nimbus/", token: "t", tenantId: "demo", env: { HOME: await emptyHome() } });
    assert.equal(req.url.toString(), "http://proxy:9/nimbus/v1/tenants/demo/services/worker");
  });

  test("an endpoint that is not an http URL is refused before any request", async () => {
    await notConfigured({ endpoint: "localhost:8080", token: "t", tenantId: "demo", env: { HOME: await emptyHome() } }, "localhost:8080", "http");
    await notConfigured({ endpoint: "ftp://x", token: "t", tenantId: "demo", env: { HOME: await emptyHome() } }, "http:// or https://");
  });

  test("no endpoint anywhere names the option, the variable and the file", async () => {
    const home = await emptyHome();
    const err = await notConfigured({ token: "t", tenantId: "demo", env: { HOME: home } }, "endpoint", "NIMBUS_ENDPOINT", home);
    assert.deepEqual(err.details.missing, ["endpoint"]);
  });
});

describe("credential discovery", () => {
  const base = async (env = {}) => ({ endpoint: "http://h:1", tenantId: "demo", env: { HOME: await emptyHome(), ...env } });

  test("a token option is sent as a bearer token and wins over the environment", async () => {
    const req = await sent({ ...(await base({ NIMBUS_TOKEN: "t-env", NIMBUS_API_KEY: "k-env" })), token: "t-opt" });
    assert.equal(req.headers.authorization, "Bearer t-opt");
    assert.equal(req.headers["x-nimbus-api-key"], undefined);
  });

  test("an apiKey option is sent as X-Nimbus-Api-Key and never as Authorization", async () => {
    const req = await sent({ ...(await base({ NIMBUS_TOKEN: "t-env" })), apiKey: "k-opt" });
    assert.equal(req.headers["x-nimbus-api-key"], "k-opt");
    assert.equal(req.headers.authorization, undefined);
  });

  test("a credential option of each kind is sent the documented way", async () => {
    for (const [kind, header, value] of [
      ["token", "authorization", "Bearer c-tok"],
      ["workloadIdentity", "authorization", "Bearer c-tok"],
      ["apiKey", "x-nimbus-api-key", "c-tok"],
    ]) {
      const req = await sent({ ...(await base({ NIMBUS_TOKEN: "t-env" })), credential: { kind, value: "c-tok" } });
      assert.equal(req.headers[header], value, kind);
    }
  });

  test("two credential options at once are refused", async () => {
    await notConfigured({ ...(await base()), token: "a", apiKey: "b" }, "more than one", "token", "apiKey");
  });

  test("a credential option of an unknown kind is refused", async () => {
    await notConfigured({ ...(await base()), credential: { kind: "password", value: "x" } }, "workloadIdentity");
  });

  test("an undefined or empty token option counts as not given", async () => {
    const req = await sent({ ...(await base({ NIMBUS_TOKEN: "t-env" })), token: undefined });
    assert.equal(req.headers.authorization, "Bearer t-env");
    const req2 = await sent({ ...(await base({ NIMBUS_TOKEN: "t-env" })), token: "" });
    assert.equal(req2.headers.authorization, "Bearer t-env");
  });

  test("environment variables are tried in the documented order", async () => {
    const all = {
      NIMBUS_TOKEN: "v-token",
      NIMBUS_BEARER_TOKEN: "v-bearer",
      NIMBUS_API_KEY: "v-key",
      NIMBUS_WORKLOAD_IDENTITY_TOKEN: "v-wi",
    };
    const expected = [
      ["NIMBUS_TOKEN", "authorization", "Bearer v-token"],
      ["NIMBUS_BEARER_TOKEN", "authorization", "Bearer v-bearer"],
      ["NIMBUS_API_KEY", "x-nimbus-api-key", "v-key"],
      ["NIMBUS_WORKLOAD_IDENTITY_TOKEN", "authorization", "Bearer v-wi"],
    ];
    const env = { ...all };
    for (const [name, header, value] of expected) {
      const req = await sent(await base(env));
      assert.equal(req.headers[header], value, `${name} should win`);
      const other = header === "authorization" ? "x-nimbus-api-key" : "authorization";
      assert.equal(req.headers[other], undefined);
      delete env[name];
    }
  });

  test("the environment wins over the credential file", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "demo" });
    const req = await sent({ env: { HOME: home, NIMBUS_API_KEY: "k-env" } , tenantId: "demo" });
    assert.equal(req.headers["x-nimbus-api-key"], "k-env");
    assert.equal(req.url.origin, "http://file:1", "the file may still supply the endpoint");
  });

  test("the credential file supplies endpoint, token and tenant", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "team-a" });
    const req = await sent({ env: { HOME: home } });
    assert.equal(req.headers.authorization, "Bearer t-file");
    assert.equal(req.url.pathname, "/v1/tenants/team-a/services/worker");
  });

  test("the file's tenant is not applied to a credential that came from elsewhere", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "team-a" });
    await notConfigured({ env: { HOME: home, NIMBUS_TOKEN: "t-env" } }, "tenantId");
  });

  test("NIMBUS_APPLICATION_CREDENTIALS moves the file", async () => {
    const dir = await emptyHome();
    const path = join(dir, "creds.json");
    await writeFile(path, JSON.stringify({ endpoint: "http://moved:1", token: "t-moved", tenantId: "demo" }));
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "demo" });
    const req = await sent({ env: { HOME: home, NIMBUS_APPLICATION_CREDENTIALS: path } });
    assert.equal(req.url.origin, "http://moved:1");
    assert.equal(req.headers.authorization, "Bearer t-moved");
  });

  test("a missing file named by NIMBUS_APPLICATION_CREDENTIALS is an error naming it", async () => {
    const path = join(await emptyHome(), "nope.json");
    await notConfigured({ env: { HOME: await emptyHome(), NIMBUS_APPLICATION_CREDENTIALS: path } }, path, "NIMBUS_APPLICATION_CREDENTIALS");
  });

  test("a credential file that is not JSON is an error naming it", async () => {
    const home = await homeWithFile("{not json");
    await notConfigured({ env: { HOME: home } }, join(home, ".config", "nimbus", "application_default_credentials.json"), "not valid JSON");
  });

  test("the workload identity token file comes after the credential file", async () => {
    const dir = await emptyHome();
    const tokenFile = join(dir, "wi-token");
    await writeFile(tokenFile, "wi-from-file\n");
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-file", tenantId: "demo" });
    const withFile = await sent({ env: { HOME: home, NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE: tokenFile } });
    assert.equal(withFile.headers.authorization, "Bearer t-file");

    const noFile = await sent({ ...(await base({ NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE: tokenFile })) });
    assert.equal(noFile.headers.authorization, "Bearer wi-from-file");
  });

  test("the workload identity token file is re-read on each request, so rotation works", async () => {
    const dir = await emptyHome();
    const tokenFile = join(dir, "wi-token");
    await writeFile(tokenFile, "first");
    const { fetch, calls } = fakeFetch([json(200, service())]);
    const nimbus = new Nimbus({ ...(await base({ NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE: tokenFile })), fetch });
    await nimbus.services.get({ name: "worker" });
    await writeFile(tokenFile, "second");
    await nimbus.services.get({ name: "worker" });
    assert.deepEqual(calls.map((c) => c.headers.authorization), ["Bearer first", "Bearer second"]);
  });

  test("no credential anywhere names every option and variable that would supply one", async () => {
    const err = await notConfigured(
      await base(),
      "token",
      "apiKey",
      "credential",
      "NIMBUS_TOKEN",
      "NIMBUS_BEARER_TOKEN",
      "NIMBUS_API_KEY",
      "NIMBUS_WORKLOAD_IDENTITY_TOKEN",
      "NIMBUS_APPLICATION_CREDENTIALS",
      "NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE",
    );
    assert.deepEqual(err.details.missing, ["credential"]);
  });

  test("nothing configured: the constructor succeeds and the first request names both gaps", async () => {
    const nimbus = new Nimbus({ env: { HOME: await emptyHome() } });
    assert.ok(nimbus.services);
    await notConfigured({ env: { HOME: await emptyHome() } }, "endpoint", "NIMBUS_ENDPOINT", "NIMBUS_TOKEN");
  });

  test("a failed discovery is retried on the next call", async () => {
    const env = { HOME: await emptyHome() };
    const { fetch, calls } = fakeFetch([json(200, service())]);
    const nimbus = new Nimbus({ endpoint: "http://h:1", tenantId: "demo", env, fetch });
    await assert.rejects(nimbus.services.get({ name: "worker" }), { code: "client.not_configured" });
    env.NIMBUS_TOKEN = "late";
    await nimbus.services.get({ name: "worker" });
    assert.equal(calls[0].headers.authorization, "Bearer late");
  });

  test("settings() reports where each setting came from and never the secret", async () => {
    const home = await homeWithFile({ endpoint: "http://file:1", token: "t-secret", tenantId: "demo" });
    const nimbus = new Nimbus({ env: { HOME: home } });
    const s = await nimbus.settings();
    assert.equal(s.endpoint, "http://file:1");
    assert.match(s.endpointSource, /credential file/);
    assert.equal(s.credentialKind, "token");
    assert.equal(s.tenantId, "demo");
    assert.ok(!JSON.stringify(s).includes("t-secret"));
  });
});

describe("tenant selection", () => {
  test("a call's tenantId overrides the client's default", async () => {
    const { fetch, calls } = fakeFetch([json(200, service())]);
    const nimbus = new Nimbus({ endpoint: "http://h:1", token: "t", tenantId: "demo", fetch, env: {} });
    await nimbus.services.get({ name: "worker" });
    await nimbus.services.get({ name: "worker", tenantId: "other" });
    assert.deepEqual(calls.map((c) => c.url.pathname), ["/v1/tenants/demo/services/worker", "/v1/tenants/other/services/worker"]);
  });

  test("a call without any tenant throws and sends nothing", async () => {
    const { fetch, calls } = fakeFetch([json(200, service())]);
    const nimbus = new Nimbus({ endpoint: "http://h:1", token: "t", fetch, env: { HOME: await emptyHome() } });
    await assert.rejects(nimbus.services.list(), (err) => {
      assert.equal(err.code, "client.not_configured");
      assert.match(err.message, /tenantId/);
      return true;
    });
    assert.equal(calls.length, 0);
  });
});
