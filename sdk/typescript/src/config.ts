// Endpoint, credential and tenant discovery. The order is the one the SDK guide documents:
// explicit options, then environment variables, then the local credential file, then a workload
// identity token file. Discovery runs at the first request (not in the constructor) so that
// `new Nimbus()` never throws and a missing setting is reported where it matters.

import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";

import { NimbusError } from "./errors.js";

/** How a credential is presented to the server. */
export type CredentialKind = "token" | "apiKey" | "workloadIdentity";

/**
 * An explicit credential. `token` and `workloadIdentity` are sent as `Authorization: Bearer`,
 * `apiKey` as `X-Nimbus-Api-Key`.
 */
export interface Credential {
  kind: CredentialKind;
  value: string;
}

export interface NimbusOptions {
  /** Base URL of the server, e.g. `http://localhost:8080`. */
  endpoint?: string | undefined;
  /** Default tenant for every call; a call can pass its own `tenantId`. */
  tenantId?: string | undefined;
  /** A bearer token. */
  token?: string | undefined;
  /** An API key. */
  apiKey?: string | undefined;
  /** An explicit credential of any kind. */
  credential?: Credential | undefined;
  /** The `fetch` to use; defaults to the global `fetch` at request time. */
  fetch?: typeof globalThis.fetch | undefined;
  /** Environment to discover settings from; defaults to `process.env`. */
  env?: Record<string, string | undefined> | undefined;
}

/** Where a setting came from, for error messages and `describe()`. */
export type SettingSource = string;

export interface ResolvedCredential {
  kind: CredentialKind;
  source: SettingSource;
  /** The secret. Called per request, so a rotated workload identity token file is re-read. */
  value(): Promise<string>;
}

export interface ResolvedConfig {
  endpoint: string;
  endpointSource: SettingSource;
  credential: ResolvedCredential;
  tenantId: string | undefined;
  tenantSource: SettingSource | undefined;
}

export const DEFAULT_CREDENTIAL_FILE = join(".config", "nimbus", "application_default_credentials.json");

interface CredentialFile {
  path: string;
  endpoint?: string;
  token?: string;
  tenantId?: string;
}

/** Empty strings count as unset: `token: process.env.NIMBUS_TOKEN` with the variable set to "" means "not given". */
function present(value: string | undefined | null): value is string {
  return typeof value === "string" && value.trim() !== "";
}

function notConfigured(message: string, details: Record<string, unknown> = {}, cause?: unknown): NimbusError {
  return new NimbusError({ code: "client.not_configured", message, details, cause });
}

function staticCredential(kind: CredentialKind, value: string, source: SettingSource): ResolvedCredential {
  const trimmed = value.trim();
  return { kind, source, value: async () => trimmed };
}

function explicitCredential(options: NimbusOptions): ResolvedCredential | undefined {
  const given: string[] = [];
  if (present(options.token)) given.push("token");
  if (present(options.apiKey)) given.push("apiKey");
  if (options.credential !== undefined) given.push("credential");
  if (given.length > 1) {
    throw notConfigured(
      `new Nimbus() got more than one credential option (${given.join(", ")}); pass only one of token, apiKey or credential`,
      { options: given },
    );
  }
  if (present(options.token)) return staticCredential("token", options.token, "token option");
  if (present(options.apiKey)) return staticCredential("apiKey", options.apiKey, "apiKey option");
  const c = options.credential;
  if (c !== undefined) {
    if (c === null || typeof c !== "object" || !["token", "apiKey", "workloadIdentity"].includes(c.kind)) {
      throw notConfigured(
        'the credential option must be {kind: "token" | "apiKey" | "workloadIdentity", value: string}',
        { credential: c === null || typeof c !== "object" ? String(c) : { kind: (c as Credential).kind } },
      );
    }
    if (!present(c.value)) {
      throw notConfigured(`the credential option (kind "${c.kind}") has an empty value`, { kind: c.kind });
    }
    return staticCredential(c.kind, c.value, "credential option");
  }
  return undefined;
}

function envCredential(env: Record<string, string | undefined>): ResolvedCredential | undefined {
  const order: Array<[string, CredentialKind]> = [
    ["NIMBUS_TOKEN", "token"],
    ["NIMBUS_BEARER_TOKEN", "token"],
    ["NIMBUS_API_KEY", "apiKey"],
    ["NIMBUS_WORKLOAD_IDENTITY_TOKEN", "workloadIdentity"],
  ];
  for (const [name, kind] of order) {
    const value = env[name];
    if (present(value)) return staticCredential(kind, value, name);
  }
  return undefined;
}

function credentialFilePath(env: Record<string, string | undefined>): { path: string; explicit: boolean } {
  const override = env["NIMBUS_APPLICATION_CREDENTIALS"];
  if (present(override)) return { path: override, explicit: true };
  const home = present(env["HOME"]) ? env["HOME"] : homedir();
  return { path: join(home, DEFAULT_CREDENTIAL_FILE), explicit: false };
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err ? String((err as { code: unknown }).code) : undefined;
}

async function readCredentialFile(env: Record<string, string | undefined>): Promise<CredentialFile | undefined> {
  const { path, explicit } = credentialFilePath(env);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    // The default location is optional; a path the user named explicitly must exist.
    if (!explicit && errnoCode(err) === "ENOENT") return undefined;
    throw notConfigured(
      `cannot read the Nimbus credential file ${path}${explicit ? " (named by NIMBUS_APPLICATION_CREDENTIALS)" : ""}: ${(err as Error).message}`,
      { path },
      err,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw notConfigured(
      `the Nimbus credential file ${path} is not valid JSON (${(err as Error).message}); expected {"endpoint", "token", "tenantId"}`,
      { path },
      err,
    );
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw notConfigured(`the Nimbus credential file ${path} must hold a JSON object {"endpoint", "token", "tenantId"}`, { path });
  }
  const obj = parsed as Record<string, unknown>;
  const field = (name: string): string | undefined => {
    const v = obj[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") {
      throw notConfigured(`the Nimbus credential file ${path} has a non-string "${name}"`, { path, field: name });
    }
    return present(v) ? v : undefined;
  };
  return { path, endpoint: field("endpoint"), token: field("token"), tenantId: field("tenantId") };
}

function workloadTokenFileCredential(path: string): ResolvedCredential {
  const source = `NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE (${path})`;
  return {
    kind: "workloadIdentity",
    source,
    // Re-read on every request: workload identity token files are rotated in place.
    value: async () => {
      let text: string;
      try {
        text = await readFile(path, "utf8");
      } catch (err) {
        throw notConfigured(
          `cannot read the workload identity token file ${path} named by NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE: ${(err as Error).message}`,
          { path },
          err,
        );
      }
      if (!present(text)) {
        throw notConfigured(`the workload identity token file ${path} named by NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE is empty`, { path });
      }
      return text.trim();
    },
  };
}

function normalizeEndpoint(raw: string, source: SettingSource): string {
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    throw notConfigured(`the Nimbus endpoint "${raw}" from ${source} is not a URL; use e.g. http://localhost:8080`, {
      endpoint: raw,
      source,
    });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw notConfigured(`the Nimbus endpoint "${raw}" from ${source} must be an http:// or https:// URL`, {
      endpoint: raw,
      source,
    });
  }
  if (url.search !== "" || url.hash !== "") {
    throw notConfigured(`the Nimbus endpoint "${raw}" from ${source} must not have a query or fragment`, {
      endpoint: raw,
      source,
    });
  }
  // Keep a path prefix (a server behind a reverse proxy at /nimbus), drop the trailing slash.
  return url.toString().replace(/\/+$/, "");
}

/** Runs discovery. Throws `client.not_configured` naming every option and variable that would fix it. */
export async function resolveConfig(options: NimbusOptions): Promise<ResolvedConfig> {
  const env = options.env ?? process.env;

  let endpoint: string | undefined;
  let endpointSource: SettingSource | undefined;
  if (present(options.endpoint)) {
    endpoint = options.endpoint;
    endpointSource = "endpoint option";
  } else if (present(env["NIMBUS_ENDPOINT"])) {
    endpoint = env["NIMBUS_ENDPOINT"];
    endpointSource = "NIMBUS_ENDPOINT";
  }

  let credential = explicitCredential(options) ?? envCredential(env);
  let tenantId: string | undefined;
  let tenantSource: SettingSource | undefined;
  if (present(options.tenantId)) {
    tenantId = options.tenantId;
    tenantSource = "tenantId option";
  } else if (present(env["NIMBUS_TENANT"])) {
    // For a token from the environment (CI jobs, containers), whose tenant the file cannot give.
    tenantId = env["NIMBUS_TENANT"];
    tenantSource = "NIMBUS_TENANT";
  }

  const file = endpoint === undefined || credential === undefined ? await readCredentialFile(env) : undefined;
  if (file !== undefined) {
    if (endpoint === undefined && file.endpoint !== undefined) {
      endpoint = file.endpoint;
      endpointSource = `credential file ${file.path}`;
    }
    if (credential === undefined && file.token !== undefined) {
      credential = staticCredential("token", file.token, `credential file ${file.path}`);
      // The file's tenant belongs to the file's token; it is not applied to a credential from elsewhere.
      if (tenantId === undefined && file.tenantId !== undefined) {
        tenantId = file.tenantId;
        tenantSource = `credential file ${file.path}`;
      }
    }
  }

  if (credential === undefined && present(env["NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE"])) {
    credential = workloadTokenFileCredential(env["NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE"]);
  }

  const { path: filePath } = credentialFilePath(env);
  const problems: string[] = [];
  if (endpoint === undefined) {
    problems.push(
      `no Nimbus endpoint: pass {endpoint} to new Nimbus(), set NIMBUS_ENDPOINT, or put "endpoint" in the credential file ${filePath}`,
    );
  }
  if (credential === undefined) {
    problems.push(
      "no Nimbus credential: pass {token}, {apiKey} or {credential} to new Nimbus(), " +
        "or set NIMBUS_TOKEN (or NIMBUS_BEARER_TOKEN), NIMBUS_API_KEY or NIMBUS_WORKLOAD_IDENTITY_TOKEN, " +
        `or write "token" in the credential file ${filePath} (path overridable with NIMBUS_APPLICATION_CREDENTIALS), ` +
        "or set NIMBUS_WORKLOAD_IDENTITY_TOKEN_FILE to a token file",
    );
  }
  if (endpoint === undefined || credential === undefined || endpointSource === undefined) {
    throw notConfigured(problems.join("; "), {
      missing: [...(endpoint === undefined ? ["endpoint"] : []), ...(credential === undefined ? ["credential"] : [])],
      credentialFile: filePath,
    });
  }

  return {
    endpoint: normalizeEndpoint(endpoint, endpointSource),
    endpointSource,
    credential,
    tenantId,
    tenantSource,
  };
}
